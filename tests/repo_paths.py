"""Where the tests find the repository, the FSDD recipe and its configuration files."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FSDD_RECIPE = REPO / "egs/fsdd"
FSDD_CONF = FSDD_RECIPE / "conf"
NNA_CONF = FSDD_CONF / "nna"  # the shipped NNA specs
