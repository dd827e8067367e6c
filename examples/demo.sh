#!/usr/bin/env bash
# The main job, from a fresh machine: set the host up, build the committed CPU lock (the image ID it prints is the
# one the lock records), run the example training with a seed, and replay it (IDENTICAL expected). Each step's time
# goes to stderr as "demo: ..." lines; benchmarks/bench_demo.sh runs this on an empty engine with empty caches.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step_start=$SECONDS
step() { echo "demo: $1 took $((SECONDS - step_start)) s" >&2; step_start=$SECONDS; }

bash .ci/setup-host
step "set-up (.ci/setup-host)"

# 1. Build the committed lock as it is. The first time, envkit makes the lock's Debian base from its pinned .debs
#    (mmdebstrap, about a minute), fetches every wheel by sha256 into its cache, installs the venv with no network
#    and loads the image it assembled; it says "matches the lock". Then a cache hit in well under a second.
envkit build lockfiles/cpu.lock.yaml
step "build (envkit build lockfiles/cpu.lock.yaml)"

# 2. Run the example with a seed; the run id is the last line of stdout.
cd examples
run_id=$(envkit run --seed 42 --lock ../lockfiles/cpu.lock.yaml train.py --epochs 3 | tail -n 1)
envkit show "$run_id"
step "run (envkit run --seed 42 ... train.py --epochs 3, envkit show)"

# 3. Replay it: platform check, the same image by ID, the same code and seed, a bitwise verdict (exit 0 = IDENTICAL).
envkit replay "$run_id"
step "replay (envkit replay RUN_ID)"
echo "demo: done in $((SECONDS - start)) s" >&2
