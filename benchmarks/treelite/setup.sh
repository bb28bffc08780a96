#!/usr/bin/env sh
# treelite's own environment: benchmarks/treelite/.venv, from requirements.txt, with the versions of the
# packages it shares with looplab taken from looplab's lock (requirements.lock as constraints).
# Uses uv when looplab's environment has it (fast), else python -m venv and pip. Idempotent.
# tl2cgen compiles the model to C: a C compiler (gcc or cc) must be on PATH when the benchmark runs.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import treelite, tl2cgen, sklearn, skops" 2>/dev/null; then
  exit 0
fi
if [ -x "$root/.venv/bin/uv" ]; then
  "$root/.venv/bin/uv" venv --quiet --python "$(command -v "$python")" "$venv"
  VIRTUAL_ENV="$venv" "$root/.venv/bin/uv" pip install --quiet -r "$here/requirements.txt" -c "$root/requirements.lock"
else
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt" -c "$root/requirements.lock"
fi
"$venv/bin/python" -c "import treelite, tl2cgen; print('treelite', treelite.__version__, 'tl2cgen', tl2cgen.__version__, 'in', '$venv')"
