#!/usr/bin/env sh
# NannyML's own environment: benchmarks/nannyml/.venv, from requirements.txt (its pins clash with looplab's lock).
# Uses uv when looplab's environment has it (fast), else python -m venv and pip. Idempotent.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import nannyml" 2>/dev/null; then
  exit 0
fi
if [ -x "$root/.venv/bin/uv" ]; then
  "$root/.venv/bin/uv" venv --quiet --python "$(command -v "$python")" "$venv"
  VIRTUAL_ENV="$venv" "$root/.venv/bin/uv" pip install --quiet -r "$here/requirements.txt"
else
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi
"$venv/bin/python" -c "import nannyml; print('NannyML', nannyml.__version__, 'in', '$venv')"
