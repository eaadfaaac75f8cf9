#!/usr/bin/env bash
# Creates ./.venv with the pinned dependencies and builds fast_rnnt offline (k2 has no wheel for
# Python 3.11 + torch 2.13). Idempotent: returns within a second when nothing changed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/.venv
python=${NNAQAT_PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
stamp=$venv/.nnaqat-setup
want=$(cat "$root/requirements.lock" "$root/pyproject.toml" "$root/setup.py" "$root/local/setup_env.sh" \
  "$root"/plugin/nnaqat/csrc/* "$root"/plugin/nnaqat/*/csrc/* | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$venv/bin/python" -c "import torch, fast_rnnt, nnaqat._kernels" 2>/dev/null; then
  exit 0
fi

echo "$(date '+%F %T') setting up $venv" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# torch first and alone: any unpinned resolution of torch pulls a multi-GB CUDA build.
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install -r "$root/requirements.lock"
# Editable, built against the torch above: compiles the plugin's kernels (setup.py, about 2 min).
"${pip[@]}" install --no-deps --no-build-isolation -e "$root"

if ! "$venv/bin/python" -c "import fast_rnnt" 2>/dev/null; then
  echo "$(date '+%F %T') building fast_rnnt 1.3 from source (about 80 s)" >&2
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  "${pip[@]}" download --no-deps --no-binary pybind11 pybind11==3.0.4 -d "$src"
  tar -xzf "$src/pybind11-3.0.4.tar.gz" -C "$src"
  FT_CMAKE_ARGS="-DCMAKE_BUILD_TYPE=Release -DFT_BUILD_TESTS=OFF -DFT_WITH_CUDA=OFF -DCMAKE_CXX_STANDARD=17 \
-DPYBIND11_FINDPYTHON=OFF -DFETCHCONTENT_FULLY_DISCONNECTED=ON -DFETCHCONTENT_SOURCE_DIR_PYBIND11=$src/pybind11-3.0.4" \
  FT_MAKE_ARGS="-j$(nproc)" "${pip[@]}" install --no-build-isolation --no-deps fast-rnnt==1.3
fi

"$venv/bin/python" -c "import torch, fast_rnnt, lhotse, sentencepiece, nnaqat._kernels"
echo "$want" > "$stamp"
echo "$(date '+%F %T') environment ready" >&2
