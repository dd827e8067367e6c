"""Run a Python script on an emulated x86-64 CPU model (QEMU's user mode), as an envkit job.

    envkit run --seed 0 --mount /usr/bin/qemu-x86_64-static:/opt/qemu/qemu-x86_64-static \\
        emulate_cpu.py Haswell portable_train.py weights.pt

The job's Python replaces itself with ``qemu-x86_64-static -cpu MODEL python SCRIPT ARGS...``: the same image, code,
environment and seed, the same process (the bootstrap, the step trace and the op trace run inside it as usual), on
another CPU. The emulator is an input of the run (mounted read-only, hashed and recorded), so a replay of the run,
or a rerun of it by ``envkit diff --pin``, runs on the same emulated CPU again. ``EMULATOR`` names another path to it.

It is how envkit's own tests compare a run on this machine's CPU with the same job on an Intel Haswell (AVX2, no
AVX-512) without a second machine; the emulator computes each instruction as that CPU model would.
"""

import os
import sys

EMULATOR = os.environ.get("EMULATOR", "/opt/qemu/qemu-x86_64-static")


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: emulate_cpu.py CPU_MODEL SCRIPT [ARGS...]  (e.g. Haswell train.py)")
    if not os.path.isfile(EMULATOR):
        sys.exit(f"emulate_cpu.py: no emulator at {EMULATOR}; mount one: --mount $(which qemu-x86_64-static):{EMULATOR}")
    cpu, script, *args = sys.argv[1:]
    sys.stdout.flush()
    os.execv(EMULATOR, [EMULATOR, "-cpu", cpu, sys.executable, script, *args])


if __name__ == "__main__":
    main()
