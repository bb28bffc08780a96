#!/usr/bin/env sh
# NannyML's own environment: benchmarks/nannyml/.venv, from requirements.txt (its pins clash with looplab's lock).
# See ../anchor_env.sh.
exec sh "$(dirname "$0")/../anchor_env.sh" "$(dirname "$0")" "nannyml"
