#!/usr/bin/env bash
# The main job, from a fresh machine: set the host up, build the committed CPU lock (the image ID it prints is the
# one the lock records), run the example training with a seed, and replay it (IDENTICAL expected).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup-host

# 1. Build the committed lock as it is. The first time, envkit makes the lock's Debian base from its pinned .debs
#    (mmdebstrap, about a minute), fetches every wheel by sha256 into its cache, installs the venv with no network
#    and loads the image it assembled; it says "matches the lock". Then a cache hit in well under a second.
envkit build lockfiles/cpu.lock.yaml

# 2. Run the example with a seed; the run id is the last line of stdout.
cd examples
run_id=$(envkit run --seed 42 --lock ../lockfiles/cpu.lock.yaml train.py --epochs 3 | tail -n 1)
envkit show "$run_id"

# 3. Replay it: platform check, the same image by ID, the same code and seed, a bitwise verdict (exit 0 = IDENTICAL).
envkit replay "$run_id"
