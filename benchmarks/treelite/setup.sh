#!/usr/bin/env sh
# treelite's own environment: benchmarks/treelite/.venv, from requirements.txt, with the versions of the
# packages it shares with looplab taken from looplab's lock (requirements.lock as constraints). See ../anchor_env.sh.
# tl2cgen compiles the model to C: a C compiler (gcc or cc) must be on PATH when the benchmark runs.
exec sh "$(dirname "$0")/../anchor_env.sh" "$(dirname "$0")" "treelite, tl2cgen, sklearn, skops" --lock
