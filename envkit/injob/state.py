"""The bootstrap's state of this process, its settings from the environment, and its per-process report.

The names of the ``ENVKIT_*`` variables a job sees are defined here, once: the host side (``envkit.settings``)
imports them from this module, since the in-job package may import nothing of envkit.

The report: one JSON file per process, ``$ENVKIT_REPORT_DIR/bootstrap-<pid>.json``, written at activation and
rewritten (temp file + ``os.replace``) whenever a library gets seeded or the process becomes a worker, so a fork
worker that leaves through ``os._exit`` still leaves one. Flat: each value is a scalar, a list of strings or a
mapping of names to scalars. ``null`` where a field does not apply or torch is not loaded.

=========================  ===========================================================================================
schema_version             1
pid, ppid                  ints
role                       ``main``, ``subprocess``, ``spawn child``, ``fork child``, ``rank N``,
                           ``dataloader worker K``, ``dataloader worker K of rank N``, ``pool worker``,
                           ``executor worker``
rank, worker_id            torch.distributed rank (``RANK``), DataLoader worker id
world_size                 torch.distributed world size (``WORLD_SIZE``) as the process saw it at start, or null
seed                       the run's seed (``ENVKIT_SEED``)
process_seed               the seed the global generators of this process got last (a derived one in workers)
determinism                ``strict`` | ``warn`` | ``seed`` | ``off``
derived_seeds              whether unseeded ``default_rng()`` / ``Random()`` get derived seeds
stream                     the key derived seeds are drawn under, e.g. ``main``, ``rank/1``, ``pool/3/7``
derived_counts             mapping: generator kind -> how many derived seeds were handed out so far
hashseed, hashseed_ok      ``PYTHONHASHSEED`` in effect (``random`` when unset or ignored); whether it is the seed
threads                    the pinned thread count, or null
thread_env                 mapping: OMP_NUM_THREADS, MKL_NUM_THREADS, OPENBLAS_NUM_THREADS -> value in effect
cublas_workspace_config    ``CUBLAS_WORKSPACE_CONFIG`` in effect
libraries                  mapping: seeded library -> version (``torch.cuda``: CUDA version, seeded lazily)
torch_version, torch_git_version, torch_cuda_version, cudnn_version, cpu_capability
torch_num_threads, torch_num_interop_threads
deterministic_algorithms, deterministic_warn_only, cudnn_deterministic, cudnn_benchmark, cudnn_allow_tf32
cuda_matmul_allow_tf32, float32_matmul_precision, cuda_initialized (read without initialising CUDA)
fp32_precision             mapping: torch's TF32 settings by backend (``cuda.matmul``, ``cudnn.conv``, ...), read
                           through ``fp32_precision`` where torch has it (``ieee`` | ``tf32`` | ``none``: inherit)
nvidia_tf32_override       ``NVIDIA_TF32_OVERRIDE`` in effect (``0`` turns TF32 off under torch), or null
tf32_matmul, tf32_cudnn    whether TF32 was in effect for cuBLAS matmuls and cuDNN convolutions: torch's setting,
                           unless NVIDIA_TF32_OVERRIDE=0 overrides it (null when torch's setting cannot be read)
extensions                 in-job modules installed after torch was seeded (``trace``, ``optrace``,
                           ``portable_ops``)
warnings, errors           one-line messages (errors: the strict-mode line if an op stopped the process)
python_version             e.g. ``3.11.7``
=========================  ===========================================================================================

Only ``os`` and ``sys`` are imported: this module loads at every interpreter start-up of a job.
"""

import os
import sys

SCHEMA_VERSION = 1

# --- the variables envkit sets inside the job's container ------------------------------------------------------------
ENV_SEED = "ENVKIT_SEED"
ENV_DETERMINISM = "ENVKIT_DETERMINISM"  # strict | warn | seed | off
ENV_THREADS = "ENVKIT_THREADS"
ENV_REPORT_DIR = "ENVKIT_REPORT_DIR"  # where each process writes its JSON report
ENV_OUTPUT_DIR = "ENVKIT_OUTPUT_DIR"  # everything under it is an output of the run
ENV_RUN_ID = "ENVKIT_RUN_ID"
ENV_CPU_PROFILE = "ENVKIT_CPU_PROFILE"  # native | portable
ENV_TRACE = "ENVKIT_TRACE"  # step-trace interval: N steps, auto, 0 = off
ENV_TRACE_FILE = "ENVKIT_TRACE_FILE"  # the trace file of the job's first tracing process (others: trace.rankR...)
ENV_TRACE_GRADS = "ENVKIT_TRACE_GRADS"  # "1": the step trace digests gradients too
ENV_TRACE_STEPS = "ENVKIT_TRACE_STEPS"  # "A-B": the step trace also records every step from A to B (pin runs)
ENV_TRACE_OPS = "ENVKIT_TRACE_OPS"  # a step: the op trace records every ATen op of that step
ENV_TRACE_OPS_FILE = "ENVKIT_TRACE_OPS_FILE"  # the op trace's file (default $ENVKIT_REPORT_DIR/optrace.jsonl)
ENV_TRACE_OPS_SAVE = "ENVKIT_TRACE_OPS_SAVE"  # "12,40": the op trace saves those ops' inputs and outputs
ENV_TRACE_OPS_MAX = "ENVKIT_TRACE_OPS_MAX"  # the op trace stops recording after this many ops (default 500000)
ENV_BOOTSTRAP_ROOT = "ENVKIT_BOOTSTRAP_ROOT"  # set by the bootstrap: pid of the job's first process (main vs children)

DETERMINISM_LEVELS = ("strict", "warn", "seed", "off")
DEFAULT_DETERMINISM = "strict"
DEFAULT_THREADS = 1
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class BootstrapError(ValueError):
    """A bad seed, level, thread count or RNG state given to the bootstrap."""


class State:
    """Everything the bootstrap knows about this process (one instance, :data:`S`)."""

    def __init__(self):
        self.active = False
        self.in_run = False  # activated from the environment of an envkit run, not by seed_everything()
        self.seed = 0
        self.level = "off"
        self.threads = None
        self.derive = False
        self.process_seed = 0
        self.stream = ("main",)
        self.counters = {}
        self.report_dir = None
        self.report = {}
        self.hooks_installed = False
        self.extensions_done = False
        self.fork_seed = 0  # drawn in the parent just before each fork, for the child's random
        self.executors = 0  # ProcessPoolExecutors created so far (their tasks are numbered per executor)


S = State()


# --- validation ------------------------------------------------------------------------------------------------------
def parse_seed(value, name="seed"):
    try:
        seed = int(str(value).strip(), 10)
    except ValueError:
        raise BootstrapError(f"{name}={value!r} is not an integer; give a seed with 0 <= seed < 2**32") from None
    if not 0 <= seed < 2**32:
        raise BootstrapError(f"{name}={value!r} is out of range; give a seed with 0 <= seed < 2**32")
    return seed


def parse_level(value, name="determinism"):
    level = str(value).strip().lower()
    if level not in DETERMINISM_LEVELS:
        raise BootstrapError(f"{name}={value!r} is not one of {', '.join(DETERMINISM_LEVELS)}")
    return level


def parse_threads(value, name="threads"):
    try:
        threads = int(str(value).strip(), 10)
    except ValueError:
        raise BootstrapError(f"{name}={value!r} is not an integer; give a thread count >= 1") from None
    if threads < 1:
        raise BootstrapError(f"{name}={value!r} is out of range; give a thread count >= 1")
    return threads


# --- the report ------------------------------------------------------------------------------------------------------
def new_report(role, rank):
    return {
        "schema_version": SCHEMA_VERSION, "pid": os.getpid(), "ppid": os.getppid(), "role": role,
        "rank": rank, "world_size": env_int("WORLD_SIZE"), "worker_id": None, "seed": None, "process_seed": None,
        "determinism": None, "derived_seeds": None, "stream": None, "derived_counts": {}, "hashseed": None,
        "hashseed_ok": None, "threads": None, "thread_env": {}, "cublas_workspace_config": None, "libraries": {},
        "torch_version": None, "torch_git_version": None, "torch_cuda_version": None, "cudnn_version": None,
        "cpu_capability": None, "torch_num_threads": None, "torch_num_interop_threads": None,
        "deterministic_algorithms": None, "deterministic_warn_only": None, "cudnn_deterministic": None,
        "cudnn_benchmark": None, "cudnn_allow_tf32": None, "cuda_matmul_allow_tf32": None,
        "float32_matmul_precision": None, "cuda_initialized": None, "fp32_precision": {},
        "nvidia_tf32_override": None, "tf32_matmul": None, "tf32_cudnn": None,
        "extensions": [], "warnings": [], "errors": [],
        "python_version": sys.version.split()[0],
    }


# Where torch keeps its TF32 settings (torch >= 2.9: fp32_precision, by backend and operation; "none" inherits).
_FP32_PRECISION = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul")


def sync_report():
    """Copy the seeding state and torch's flags in effect into the report.

    Each torch field is read in its own try: torch raises on the legacy TF32 flags once a job used the new
    ``fp32_precision`` ones, and one unreadable field must not blank the others.
    """
    r = S.report
    r["process_seed"] = S.process_seed
    r["stream"] = "/".join(str(part) for part in S.stream)
    r["derived_counts"] = dict(S.counters)
    torch = sys.modules.get("torch")
    if torch is None or not getattr(torch, "_envkit_patched", False):
        return
    fields = {
        "torch_version": lambda: torch.__version__,
        "torch_git_version": lambda: torch.version.git_version,
        "torch_cuda_version": lambda: torch.version.cuda,
        "cpu_capability": lambda: torch.backends.cpu.get_cpu_capability(),
        "torch_num_threads": lambda: torch.get_num_threads(),
        "torch_num_interop_threads": lambda: torch.get_num_interop_threads(),
        "deterministic_algorithms": lambda: torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": lambda: torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": lambda: bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": lambda: bool(torch.backends.cudnn.benchmark),
        "cudnn_allow_tf32": lambda: bool(torch.backends.cudnn.allow_tf32),
        "cuda_matmul_allow_tf32": lambda: bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": lambda: torch.get_float32_matmul_precision(),
        "cuda_initialized": lambda: torch.cuda.is_initialized(),  # a plain flag: reading it does not initialise CUDA
    }
    failed = []
    for name, read in fields.items():
        try:
            r[name] = read()
        except Exception:  # noqa: BLE001 - the report is best effort; seeding already happened
            r[name] = None
            failed.append(name)
    try:
        if r["cudnn_version"] is None and torch.backends.cudnn.is_available():
            r["cudnn_version"] = torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        failed.append("cudnn_version")
    _sync_tf32(torch, r)
    if [f for f in failed if f not in ("cudnn_allow_tf32", "cuda_matmul_allow_tf32", "float32_matmul_precision")]:
        warn(f"could not read torch's {', '.join(failed)} for the report")


def _sync_tf32(torch, r):
    """TF32 as it ran: torch's settings (``fp32_precision`` where it exists, else the legacy flags), then
    ``NVIDIA_TF32_OVERRIDE=0``, which turns TF32 off in cuBLAS and cuDNN whatever torch says."""
    precision = {}
    for path in _FP32_PRECISION:
        obj = torch.backends
        try:
            for part in filter(None, path.split(".")):
                obj = getattr(obj, part)
            value = obj.fp32_precision
        except Exception:  # noqa: BLE001 - an older torch without it, or a backend this build lacks
            continue
        precision[path or "default"] = str(value)
    r["fp32_precision"] = precision
    override = os.environ.get("NVIDIA_TF32_OVERRIDE")
    r["nvidia_tf32_override"] = override

    def effective(*paths):
        for path in paths:  # the most specific setting that is not "none" (inherit) wins
            value = precision.get(path)
            if value not in (None, "none"):
                return value == "tf32"
        return None

    if precision:
        matmul = effective("cuda.matmul", "default")
        matmul = False if matmul is None else matmul  # every level inherits: torch's default for matmuls is IEEE
        cudnn = effective("cudnn.conv", "cudnn", "default")
        cudnn = True if cudnn is None else cudnn  # and for cuDNN convolutions TF32
    else:
        matmul, cudnn = r.get("cuda_matmul_allow_tf32"), r.get("cudnn_allow_tf32")
    off = override is not None and override.strip() == "0"
    r["tf32_matmul"] = None if matmul is None else (bool(matmul) and not off)
    r["tf32_cudnn"] = None if cudnn is None else (bool(cudnn) and not off)


def write_report():
    directory = S.report_dir
    if not directory:
        return
    path = os.path.join(directory, f"bootstrap-{os.getpid()}.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(dumps(S.report) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        S.report_dir = None  # say it once, then stop trying
        warn(f"cannot write the bootstrap report to {directory} ({exc.strerror or exc})")


def dumps(value):
    """JSON for the report's plain values. Not the json module: importing it (and re) costs ~8 ms per process."""
    from _json import encode_basestring_ascii as quote

    if value is None or value is True or value is False:
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, (int, float)):
        return repr(value) if value == value and value not in (float("inf"), float("-inf")) else "null"
    if isinstance(value, dict):
        items = (f"{quote(str(key))}: {dumps(value[key])}" for key in sorted(value, key=str))
        return "{" + ", ".join(items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(dumps(item) for item in value) + "]"
    return quote(str(value))


def is_main():
    # Children inherit the environment, so a warning about it is printed once, by the job's first process.
    return S.report.get("role") == "main"


def warn(message, stderr=True):
    warnings = S.report.setdefault("warnings", [])
    if message in warnings:
        return
    warnings.append(message)
    if stderr:
        sys.stderr.write(f"envkit: warning: {message}\n")


def env_int(name):
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def env_rank():
    return env_int("RANK")


def current_rank():
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # noqa: BLE001 - a half-torn-down process group: fall back to the environment
        pass
    return env_rank()
