"""What the bootstrap will do for `envkit run --trace ops:STEP`: install the op trace (from ENVKIT_TRACE_OPS*), then
run the unmodified script.

    python traced.py SCRIPT [ARGS...]      (with the repository root on PYTHONPATH)
"""

import runpy
import sys

import torch

from envkit.injob import optrace

optrace.install(torch)
print("capability", torch.backends.cpu.get_cpu_capability(), flush=True)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
