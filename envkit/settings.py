"""Every ENVKIT_* environment variable, image label and fixed path, with its default, in one place.

The variables a job sees inside its container are defined by the in-job package (:mod:`envkit.injob.state`), which
may import nothing of envkit; they are re-exported here so that host code names them from one module.
"""

from __future__ import annotations

import os
from pathlib import Path

from envkit.injob.state import (  # noqa: F401 - re-exported: the one definition lives in the in-job package
    DEFAULT_DETERMINISM,
    DEFAULT_THREADS,
    DETERMINISM_LEVELS,
    ENV_BOOTSTRAP_ROOT,
    ENV_CPU_PROFILE,
    ENV_DETERMINISM,
    ENV_OUTPUT_DIR,
    ENV_REPORT_DIR,
    ENV_RUN_ID,
    ENV_SEED,
    ENV_THREADS,
    ENV_TRACE,
    ENV_TRACE_FILE,
    ENV_TRACE_GRADS,
    ENV_TRACE_OPS,
    ENV_TRACE_OPS_FILE,
    ENV_TRACE_OPS_MAX,
    ENV_TRACE_OPS_SAVE,
    ENV_TRACE_STEPS,
    THREAD_ENV_VARS,
)

# --- variables the user sets on the host -------------------------------------------------------------------------
ENV_HOME = "ENVKIT_HOME"  # the run store; default ./.envkit in the project folder
ENV_CACHE = "ENVKIT_CACHE"  # wheels, .debs, bases, the build map; default ~/.cache/envkit
ENV_DEBUG = "ENVKIT_DEBUG"  # "1": the CLI shows tracebacks
# "1": a lockfile's file:// URLs and bare paths are read as given. Without it a lock's local URL is only a hint, and
# local wheels come from this host's pip configuration and the specs locked here (envkit/lock/localsources.py).
ENV_ALLOW_FILE_URLS = "ENVKIT_ALLOW_FILE_URLS"
# Space-separated Debian mirror URLs tried after this host's apt sources for a pinned .deb no longer on them
# (e.g. a snapshot.debian.org URL of the day the lock was made).
ENV_DEB_MIRRORS = "ENVKIT_DEB_MIRRORS"
ENV_SLURM_PYTHON = "ENVKIT_SLURM_PYTHON"  # the Python with envkit on Slurm nodes (default: the submitting one's path)

CPU_PROFILES = ("native", "portable")
DEFAULT_CPU_PROFILE = "native"
DEFAULT_TRACE = "auto"  # the step-trace interval when none is given: tracing stays under 2% of training time

# The determinism environment every image carries (ENV in the image's config). PYTHONHASHSEED and
# CUBLAS_WORKSPACE_CONFIG only work when set before the interpreter / CUDA start, so they belong to the image.
IMAGE_DETERMINISM_ENV: dict[str, str] = {
    "PYTHONHASHSEED": "0",
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "OMP_DYNAMIC": "FALSE",
    "MKL_DYNAMIC": "FALSE",
    "TF_DETERMINISTIC_OPS": "1",
}
# NVIDIA_TF32_OVERRIDE=0 is not in that set: TF32 does not make runs differ run to run, and the override turns TF32
# off behind torch's back (torch's flags then say what did not run). Opt in per run (--env NVIDIA_TF32_OVERRIDE=0)
# or per image (the spec's env); the bootstrap records the TF32 state in effect either way.

# Paths inside the image and the job's container.
IMAGE_VENV = "/opt/envkit/venv"
IN_IMAGE_PACKAGE = "envkit_injob"  # envkit/injob/ as it is named in an image's site-packages
CONTAINER_WORKDIR = "/work"
CONTAINER_META = "/envkit/meta"
CONTAINER_OUTPUT = "/envkit/output"
CONTAINER_TOOLS = "/envkit/tools"  # helper scripts (probe, tensor diff) mounted read-only

# The job's container: an unprivileged user when envkit runs as root (the folders it writes are handed to it), no
# capabilities, no new privileges, a bound on processes and threads.
JOB_UID = 65532
PIDS_LIMIT = 16384
NETWORK_MODES = ("none", "bridge")
# The job's hostname, the same on every run (Docker's default is the random container id, which a job may print or
# hash), and resolvable: torchrun --standalone and gloo look it up, and with no network nothing else names it.
JOB_HOSTNAME = "envkit-job"
IPC_MODES = ("private", "shareable", "host")
DEFAULT_IPC = "private"
# What NCCL wants in a container (NVIDIA's own advice for its framework containers): pinned memory without a limit
# and a 64 MiB stack. Given to every job that has GPUs; name -> (soft, hard), -1 = unlimited.
GPU_ULIMITS: dict[str, tuple[int, int]] = {"memlock": (-1, -1), "stack": (64 * 2**20, 64 * 2**20)}

# Labels: on every envkit image, on base images envkit makes, and on the containers of runs.
LABEL_LOCK_SHA = "io.envkit.lock.sha256"
LABEL_VERSION = "io.envkit.version"
LABEL_MANAGED = "io.envkit.managed"
LABEL_CPU_PROFILE = "io.envkit.cpu-profile"
LABEL_LOCK_NAME = "io.envkit.lock.name"
LABEL_BUILD_KEY = "io.envkit.build-key"
LABEL_BASE_PYTHON = "io.envkit.base.python"
LABEL_BASE_SOURCE = "io.envkit.base.source"
LABEL_BASE_PACKAGES = "io.envkit.base.packages-sha256"
LABEL_BASE_COMPILER = "io.envkit.base.compiler"  # a base with a C compiler and Python's headers (torch.compile)
LABEL_CUDA = "io.envkit.cuda"  # the CUDA version the image's nvidia-* wheels were built for (13.0)
LABEL_RUN = "io.envkit.run"


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


def deb_mirrors() -> list[str]:
    """Extra Debian mirrors for pinned .debs (``ENVKIT_DEB_MIRRORS``), in order."""
    return os.environ.get(ENV_DEB_MIRRORS, "").split()


def build_cache_dir() -> Path:
    """envkit's own map of build keys to the image IDs it built: <cache>/builds/<key>.json."""
    return cache_dir() / "builds"


def resolved_locks_dir() -> Path:
    """What lock files resolved to (build key, tag), by their bytes and envkit's code: <cache>/locks/<key>.json."""
    return cache_dir() / "locks"


def store_dir(project: Path | None = None) -> Path:
    """The run store: $ENVKIT_HOME, else .envkit in the project folder (found upward from the current folder)."""
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).absolute()  # bind mounts need absolute paths
    from envkit.project import STORE_DIR, find_root

    return (Path(project).absolute() if project else find_root()) / STORE_DIR


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0", "false", "no")


def debug_enabled() -> bool:
    return _flag(ENV_DEBUG)


def allow_file_urls() -> bool:
    """Whether a lockfile's local URLs may be read as given (``ENVKIT_ALLOW_FILE_URLS=1``)."""
    return _flag(ENV_ALLOW_FILE_URLS)
