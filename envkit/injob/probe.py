"""The in-container software probe: run with the image's Python, it prints one JSON object on stdout.

    python probe.py            (or: python - < probe.py)

It reports what decides the numerics inside the image: Python, torch (version, git hash, CUDA runtime, cuDNN, NCCL,
MKL, oneDNN, ATen's CPU capability in effect), numpy and its BLAS, thread counts, and the environment variables that
steer kernel dispatch. torch and numpy are imported only if present; every probe is optional, and a failed one leaves
its error text under ``errors``. The output becomes the ``container`` section of a fingerprint.

Standard library only and Python 3.6+ syntax: it runs in whatever interpreter the image has, without envkit installed.
Run it with the job's environment (thread variables, ATEN_CPU_CAPABILITY) so that it sees what the job will see.
"""

import json
import os
import platform
import re
import sys

SCHEMA_VERSION = 1

# Variables that change which kernels run, on how many threads, or whether TF32 is used.
ENV_NAMES = (
    "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE",
    "NPY_DISABLE_CPU_FEATURES", "CUBLAS_WORKSPACE_CONFIG", "NVIDIA_TF32_OVERRIDE", "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
    "PYTHONHASHSEED",
)


def probe():
    """The report as a dict."""
    errors = {}

    def attempt(name, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - a probe must never fail; its error is reported
            errors[name] = "%s: %s" % (type(exc).__name__, exc)
            return None

    report = {
        "schema_version": SCHEMA_VERSION,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
    }
    torch = _import("torch", report, errors)
    if torch is not None:
        report["torch"] = _torch(torch, attempt)
    numpy = _import("numpy", report, errors)
    if numpy is not None:
        report["numpy"] = _numpy(numpy, attempt)
    report["threads"] = {
        "cpu_count": os.cpu_count(),
        "affinity": attempt("threads.affinity", lambda: len(os.sched_getaffinity(0))),
        "torch": attempt("threads.torch", torch.get_num_threads) if torch is not None else None,
        "torch_interop": attempt("threads.torch_interop", torch.get_num_interop_threads) if torch is not None else None,
    }
    report["env"] = {k: os.environ[k] for k in ENV_NAMES if k in os.environ}
    report["errors"] = errors
    return report


def _import(name, report, errors):
    try:
        return __import__(name)
    except ImportError:
        report[name] = {"available": False, "reason": "not installed"}
    except Exception as exc:  # noqa: BLE001 - a broken install is reported, not fatal
        report[name] = {"available": False, "reason": "import failed"}
        errors[name] = "%s: %s" % (type(exc).__name__, exc)
    return None


def _torch(torch, attempt):
    config = attempt("torch.config", lambda: torch.__config__.show()) or ""
    cuda = getattr(torch.version, "cuda", None)
    cuda_available = attempt("torch.cuda_available", torch.cuda.is_available)
    return {
        "available": True,
        "version": torch.__version__,
        "git_version": getattr(torch.version, "git_version", None),
        "debug": getattr(torch.version, "debug", None),
        "cuda": cuda,  # the CUDA runtime torch was built with
        "cudnn": attempt("torch.cudnn", lambda: torch.backends.cudnn.version()
                         if torch.backends.cudnn.is_available() else None),
        "nccl": attempt("torch.nccl", lambda: _version_text(torch.cuda.nccl.version()) if cuda else None),
        "mkl": _search(r"Math Kernel Library Version ([0-9][0-9.]*)", config),
        "mkl_build": _search(r"Math Kernel Library Version [^\n]*?Build (\d+)", config),
        "onednn": _search(r"(?:MKL-DNN|oneDNN) v(\S+)", config),
        "onednn_git": _search(r"(?:MKL-DNN|oneDNN) v\S+ \(Git Hash (\w+)\)", config),
        "cpu_capability": attempt("torch.cpu_capability", torch.backends.cpu.get_cpu_capability),
        "cuda_available": cuda_available,
        "cuda_device_count": attempt("torch.cuda_device_count", torch.cuda.device_count) if cuda_available else 0,
        "cuda_arch_list": attempt("torch.cuda_arch_list", torch.cuda.get_arch_list) if cuda else [],
        "devices": attempt("torch.devices", lambda: _cuda_devices(torch)) if cuda_available else [],
    }


def _cuda_devices(torch):
    """What CUDA reports for each device the container was given: a MIG slice has its parent's name but its own
    SM count, so both are kept."""
    out = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        out.append({"name": props.name, "capability": "%d.%d" % (props.major, props.minor),
                    "sm_count": props.multi_processor_count, "memory_bytes": props.total_memory})
    return out


def _numpy(numpy, attempt):
    deps = attempt("numpy.config", lambda: numpy.show_config(mode="dicts")["Build Dependencies"]) or {}
    blas, lapack = deps.get("blas") or {}, deps.get("lapack") or {}
    return {
        "available": True,
        "version": numpy.__version__,
        "blas": blas.get("name"),
        "blas_version": blas.get("version"),
        "lapack": lapack.get("name"),
        "lapack_version": lapack.get("version"),
    }


def _search(pattern, text):
    match = re.search(pattern, text)
    return match.group(1) if match else None


def _version_text(value):
    # torch.cuda.nccl.version() is an int (2708) in old releases and a tuple (2, 18, 1) in newer ones.
    return ".".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def main():
    # Libraries may print on import (warnings, banners), some from C: point fd 1 at stderr while probing so that
    # stdout carries the JSON and nothing else.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        report = probe()
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
