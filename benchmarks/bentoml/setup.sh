#!/usr/bin/env sh
# BentoML's own environment: benchmarks/bentoml/.venv, from requirements.txt (BentoML 1.4's pins clash with
# looplab's lock; the packages the model needs are pinned there at the lock's versions).
# Uses uv when looplab's environment has it (fast), else python -m venv and pip. Idempotent.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import bentoml, sklearn, skops" 2>/dev/null; then
  exit 0
fi
if [ -x "$root/.venv/bin/uv" ]; then
  "$root/.venv/bin/uv" venv --quiet --python "$(command -v "$python")" "$venv"
  VIRTUAL_ENV="$venv" "$root/.venv/bin/uv" pip install --quiet -r "$here/requirements.txt"
else
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi
"$venv/bin/python" -c "import bentoml, sklearn; print('BentoML', bentoml.__version__, 'scikit-learn', sklearn.__version__, 'in', '$venv')"
