#!/usr/bin/env sh
# An anchor's own environment, for anchors whose pins clash with looplab's lock: FOLDER/.venv from
# FOLDER/requirements.txt. Uses uv when looplab's environment has it (fast), else python -m venv and pip.
# Idempotent: an environment in which MODULES import counts as built and is left alone.
#
#   sh benchmarks/anchor_env.sh FOLDER "MODULES" [--lock]
#
# MODULES: a Python import list, e.g. "bentoml, sklearn"; --lock: the versions of the packages the anchor
# shares with looplab are taken from requirements.lock (as constraints).
set -eu
[ $# -ge 2 ] || { echo "usage: anchor_env.sh FOLDER \"MODULES\" [--lock]" >&2; exit 2; }
folder=$(cd "$1" && pwd)
check="import $2"
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$folder/.venv"
python=${PYTHON:-python3}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" 2>/dev/null; then
  exit 0
fi
if [ "${3:-}" = "--lock" ]; then
  set -- -r "$folder/requirements.txt" -c "$root/requirements.lock"
else
  set -- -r "$folder/requirements.txt"
fi
if [ -x "$root/.venv/bin/uv" ]; then
  "$root/.venv/bin/uv" venv --quiet --clear --python "$(command -v "$python")" "$venv"
  VIRTUAL_ENV="$venv" "$root/.venv/bin/uv" pip install --quiet "$@"
else
  "$python" -m venv --clear "$venv"
  "$venv/bin/pip" install --quiet "$@"
fi
"$venv/bin/python" -c "$check"
echo "built $venv ($check)"
