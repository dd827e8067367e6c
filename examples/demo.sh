#!/usr/bin/env bash
# The main job, from a fresh machine: set the host up, make the Debian base image, lock the reference CPU spec
# against it, build the CPU image, run the example training with a seed, and replay it (IDENTICAL expected).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup-host

# 1. The base image (debootstrap + docker import; about 45 s the first time, then kept).
docker image inspect envkit/base:bookworm-py3.11 >/dev/null 2>&1 \
  || envkit base debian bookworm --python 3.11

# 2. Lock the reference spec against this machine's base. The package pins equal lockfiles/cpu.lock.yaml's; the
#    base digest is this machine's (a base made elsewhere has another digest).
envkit lock lockfiles/cpu.envkit.yaml -o .envkit/lockfiles/cpu.lock.yaml

# 3. Build the CPU image (about a minute the first time; then a cache hit in well under a second).
envkit build .envkit/lockfiles/cpu.lock.yaml

# 4. Run the example with a seed; the run id is the last line of stdout.
cd examples
run_id=$(envkit run --seed 42 --lock ../.envkit/lockfiles/cpu.lock.yaml train.py --epochs 3 | tail -n 1)
envkit show "$run_id"

# 5. Replay it: platform check, the same image by ID, the same code and seed, a bitwise verdict (exit 0 = IDENTICAL).
envkit replay "$run_id"
