"""Where the tests find the repository, the FSDD recipe, its configuration files and the corpus."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FSDD_RECIPE = REPO / "egs/fsdd"
FSDD_CONF = FSDD_RECIPE / "conf"
NNA_CONF = FSDD_CONF / "nna"  # the shipped NNA specs
# the FSDD archive (never downloaded in tests)
FSDD_TARBALL = Path(os.environ.get("NNAQAT_FSDD_TARBALL", REPO.parent / "shared/corpora/fsdd/fsdd.tar.gz"))
