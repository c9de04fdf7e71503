#!/usr/bin/env bash
# The README's main job: record a CartPole-v1 dataset with a noisy behaviour policy through the
# CLI, then train an agent offline from that store and evaluate it against the behaviour policy.
#
#   bash examples/main_job.sh            # 50,000 transitions, 10,000 training steps (~1-2 min)
#   bash examples/main_job.sh --smoke    # a few seconds (the test suite runs this)
#
# Writes $RUNS/cartpole (the store) and $RUNS/dqn (checkpoints, result.json); RUNS=runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
SEED=${SEED:-0}
record_steps=50000
train_args=()
if [[ ${1:-} == --smoke ]]; then
    record_steps=3000
    train_args=(--smoke)
fi
rm -rf "$RUNS/cartpole" "$RUNS/dqn"
replaystore record CartPole-v1 "$RUNS/cartpole" --steps "$record_steps" \
    --policy examples/cartpole_policy.py:policy --seed "$SEED"
python examples/offline_dqn.py "$RUNS/cartpole" --run-dir "$RUNS/dqn" --seed "$SEED" \
    "${train_args[@]}"
