"""Every ENVKIT_* environment variable, its default, and the paths derived from them, in one place."""

from __future__ import annotations

import os
from pathlib import Path

# --- variables the user sets on the host -------------------------------------------------------------------------
ENV_HOME = "ENVKIT_HOME"  # the run store; default ./.envkit in the project folder
ENV_CACHE = "ENVKIT_CACHE"  # wheel cache and base-image build cache; default ~/.cache/envkit
ENV_DEBUG = "ENVKIT_DEBUG"  # "1": the CLI shows tracebacks

# --- variables envkit sets inside the job's container (read by the bootstrap) -------------------------------------
ENV_SEED = "ENVKIT_SEED"
ENV_DETERMINISM = "ENVKIT_DETERMINISM"  # strict | warn | seed | off
ENV_THREADS = "ENVKIT_THREADS"
ENV_REPORT_DIR = "ENVKIT_REPORT_DIR"  # where the bootstrap writes its per-process JSON report
ENV_OUTPUT_DIR = "ENVKIT_OUTPUT_DIR"  # everything under it is an output of the run
ENV_RUN_ID = "ENVKIT_RUN_ID"
ENV_CPU_PROFILE = "ENVKIT_CPU_PROFILE"  # native | portable
ENV_TRACE = "ENVKIT_TRACE"  # step-trace interval: N steps, auto (powers of two within a 1% budget), 0 = off
ENV_TRACE_FILE = "ENVKIT_TRACE_FILE"  # the trace file of the job's first tracing process (others: trace.rankR...)
ENV_TRACE_GRADS = "ENVKIT_TRACE_GRADS"  # "1": the step trace digests gradients too
ENV_BOOTSTRAP_ROOT = "ENVKIT_BOOTSTRAP_ROOT"  # set by the bootstrap: pid of the job's first process (main vs children)

DETERMINISM_LEVELS = ("strict", "warn", "seed", "off")
DEFAULT_DETERMINISM = "strict"
DEFAULT_THREADS = 1  # a fixed number recorded with the run, never whatever the host has
CPU_PROFILES = ("native", "portable")
DEFAULT_CPU_PROFILE = "native"
DEFAULT_TRACE = "auto"  # the step-trace interval when none is given: tracing stays under 2% of training time

# The determinism environment every image carries (ENV in the Dockerfile). PYTHONHASHSEED and
# CUBLAS_WORKSPACE_CONFIG only work when set before the interpreter / CUDA start, so they belong to the image.
IMAGE_DETERMINISM_ENV: dict[str, str] = {
    "PYTHONHASHSEED": "0",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_DYNAMIC": "FALSE",
    "MKL_DYNAMIC": "FALSE",
    "TF_DETERMINISTIC_OPS": "1",
    "NVIDIA_TF32_OVERRIDE": "0",
}

# Paths inside the image and the job's container.
IMAGE_VENV = "/opt/envkit/venv"
CONTAINER_WORKDIR = "/work"
CONTAINER_META = "/envkit/meta"
CONTAINER_OUTPUT = "/envkit/output"

# Labels on every envkit image.
LABEL_LOCK_SHA = "io.envkit.lock.sha256"
LABEL_VERSION = "io.envkit.version"
LABEL_MANAGED = "io.envkit.managed"
LABEL_CPU_PROFILE = "io.envkit.cpu-profile"
LABEL_LOCK_NAME = "io.envkit.lock.name"


def cache_dir() -> Path:
    """Root of envkit's host caches (wheels, debootstrap packages)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "envkit"


def wheel_cache_dir() -> Path:
    """Content-addressed wheel cache: <cache>/wheels/sha256/<hh>/<hash>/<filename>."""
    return cache_dir() / "wheels"


def store_dir(project: Path | None = None) -> Path:
    """The run store: $ENVKIT_HOME, else ./.envkit in the project folder."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).absolute()  # bind mounts need absolute paths
    return (project or Path.cwd()).absolute() / ".envkit"


def debug_enabled() -> bool:
    return os.environ.get(ENV_DEBUG, "") not in ("", "0", "false", "no")
