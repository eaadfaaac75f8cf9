#!/usr/bin/env bash
# The test suite: sets up .venv (pinned dependencies, offline fast_rnnt build) and runs pytest.
# Extra arguments go to pytest (e.g. -m slow, -k resume). pytest exits non-zero when it
# collects no test (code 5), so an empty run fails here too.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash local/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
