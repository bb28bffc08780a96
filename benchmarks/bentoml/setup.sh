#!/usr/bin/env sh
# BentoML's own environment: benchmarks/bentoml/.venv, from requirements.txt (BentoML 1.4's pins clash with
# looplab's lock; the packages the model needs are pinned there at the lock's versions). See ../anchor_env.sh.
exec sh "$(dirname "$0")/../anchor_env.sh" "$(dirname "$0")" "bentoml, sklearn, skops"
