"""The CPU profiles, as data: what an image and a run set for each, and which host differences still change numerics.

``native`` leaves every math library free to pick the host's best kernels: fastest, and bit-identical only on hosts of
the same CPU vendor, model and instruction sets. ``portable`` pins the kernels so that CPUs of either x86 vendor
compute the same bits:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen (and the SLEEF functions it carries) runs its AVX2 kernels, not AVX-512 ones.
- ``ONEDNN_MAX_CPU_ISA=AVX2`` (and the older name ``DNNL_MAX_CPU_ISA``): oneDNN's JIT emits AVX2 code at most.
- ``MKL_CBWR=COMPATIBLE``: MKL's one code path that it runs on Intel and non-Intel CPUs alike, with reproducible
  reductions. The only branch MKL honours on AMD: ``MKL_CBWR=AVX2`` falls back to ``AUTO`` there (measured; MKL's
  verbose mode prints ``CNR:AUTO``).
- ``OPENBLAS_CORETYPE=Haswell``: numpy's OpenBLAS runs its AVX2 kernels, not the SkylakeX ones on AVX-512 CPUs.
- ``MKL_DYNAMIC=FALSE``, ``OMP_DYNAMIC=FALSE`` and one fixed thread count for OpenMP, MKL and OpenBLAS.
- the bootstrap installs ``envkit_portable`` (``envkit/run/portable_ops.py``), which replaces the eight elementwise
  ops whose MKL vector-math kernels start from ``rcpps``/``rsqrtps`` even on the compatible path (their low bits
  differ between Intel, AMD and emulators): ``sqrt`` and with it Adam, ``asin``, ``acos``, ``atan``, ``tan``,
  ``log2``, ``log10``, float64 ``log``.

numpy's own SIMD loops (exp, log, expm1, log1p, arctan, power...) have AVX-512 variants too; the variable that pins
them, ``NPY_DISABLE_CPU_FEATURES``, takes names that changed between numpy versions (and numpy's current source
ignores the whole list when one name is unknown), so :func:`numpy_env` gives it for the numpy version a lock pins.

The portable profile needs AVX2 and FMA (:data:`PORTABLE_BASELINE_FLAGS`): on an older CPU ATen would quietly fall back
to other kernels. The README's "Portable CPU profile" section has the measurements behind each line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from envkit.errors import CpuProfileError, PlatformError

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PORTABLE_BASELINE_FLAGS = ("avx2", "fma")  # /proc/cpuinfo names; what ATEN_CPU_CAPABILITY=avx2 needs to take effect

# Fingerprint fields (envkit.fingerprint's dotted paths) that describe the CPU, and why each may change the bits. This is
# the one table of them: envkit.fingerprint asks classify_cpu_field(). Under native each may change the bits; under
# portable only the architecture does (another architecture runs other machine code).
CPU_FIELDS = {
    "host.arch": "another architecture runs other machine code",
    "host.cpu_vendor": "MKL picks its kernels by vendor (generic ones on AMD, ISA-specific ones on Intel)",
    "host.cpu_flags": "ATen, oneDNN and MKL dispatch on instruction sets (AVX-512 kernels sum in another order)",
    "host.cpu_model": "outside MKL's reproducible mode, MKL and oneDNN block their loops by the CPU's cache sizes",
}


@dataclass(frozen=True)
class CpuProfile:
    """One profile: the environment it bakes into images, and the CPU fields whose differences change numerics."""

    name: str
    summary: str
    image_env: dict[str, str] = field(default_factory=dict)
    numerics_fields: frozenset[str] = frozenset()


_ALWAYS = {"MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}  # thread counts never adapt to load, in any profile

PROFILES: dict[str, CpuProfile] = {
    "native": CpuProfile(
        name="native",
        summary="the host's best kernels; bit-identical only on the same CPU vendor, model and instruction sets",
        image_env=dict(_ALWAYS),
        numerics_fields=frozenset(CPU_FIELDS),
    ),
    "portable": CpuProfile(
        name="portable",
        summary="AVX2 kernels, MKL's compatible path and portable elementwise ops; bit-identical across x86 CPU "
                "vendors and models with AVX2 and FMA",
        image_env={
            **_ALWAYS,
            "ATEN_CPU_CAPABILITY": "avx2",
            "ONEDNN_MAX_CPU_ISA": "AVX2",
            "DNNL_MAX_CPU_ISA": "AVX2",  # the name oneDNN 2.x reads; 3.x reads both
            "MKL_CBWR": "COMPATIBLE",
            "OPENBLAS_CORETYPE": "Haswell",
        },
        numerics_fields=frozenset({"host.arch"}),
    ),
}


def get_profile(profile: str) -> CpuProfile:
    """The profile called ``profile``.

    Raises:
        CpuProfileError: no such profile (a typo on the command line, or a record or image label from elsewhere).
    """
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise CpuProfileError(f"unknown CPU profile {profile!r}",
                              hint=f"use one of: {', '.join(PROFILES)}") from None


def image_env(profile: str) -> dict[str, str]:
    """The ENV an image of this profile carries (no thread counts: those belong to the run)."""
    return dict(get_profile(profile).image_env)


def profile_env(profile: str, threads: int) -> dict[str, str]:
    """The environment a job of this profile runs with: the image's ENV plus one fixed thread count everywhere.

    Args:
        profile: ``native`` or ``portable``.
        threads: the thread count for OpenMP, MKL and OpenBLAS (and so torch's intra-op pool); at least 1.

    Raises:
        CpuProfileError: an unknown profile or a thread count below 1.
    """
    env = image_env(profile)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise CpuProfileError(f"thread count must be a positive integer, got {threads!r}",
                              hint="pass --threads N with N >= 1")
    env.update({name: str(threads) for name in THREAD_ENV_VARS})
    return env


def numerics_fields(profile: str) -> set[str]:
    """The CPU fields of a host fingerprint whose differences change the bits a job of this profile computes."""
    return set(get_profile(profile).numerics_fields)


def classify_cpu_field(path: str, profile: str) -> tuple[bool, str] | None:
    """``(changes numerics, why)`` for a CPU field of a fingerprint under a profile; None for other fields."""
    reason = CPU_FIELDS.get(path)
    if reason is None:
        return None
    if path in get_profile(profile).numerics_fields:
        return True, reason
    return False, f"the {profile} CPU profile pins the kernels, so this does not change the bits"


def numpy_env(profile: str, numpy_version: str | None) -> dict[str, str]:
    """``NPY_DISABLE_CPU_FEATURES`` for a portable image with this numpy (empty for native or unknown numpy).

    numpy 2.4 groups its AVX-512 loops as ``X86_V4``, ``AVX512_ICL`` and ``AVX512_SPR``; disabling them leaves the AVX2
    (``X86_V3``) loops, which gave the same bits on both CPUs measured. Older numpy names its groups differently and
    is not pinned here.
    """
    if get_profile(profile).name != "portable" or not numpy_version:
        return {}
    from packaging.version import InvalidVersion, Version  # only when an image is rendered

    try:
        version = Version(numpy_version)
    except InvalidVersion:
        return {}
    if version.release[:2] < (2, 4):
        return {}
    return {"NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}


def missing_baseline(profile: str, cpu_flags: Iterable[str] | None) -> list[str]:
    """The instruction sets this profile needs that a host's flags lack (empty for native, or when all are there).

    ``cpu_flags`` is the fingerprint's ``host.cpu_flags``; None (the probe failed) counts as lacking them all.
    """
    if get_profile(profile).name != "portable":
        return []
    have = set(cpu_flags or ())
    return [flag for flag in PORTABLE_BASELINE_FLAGS if flag not in have]


def require_baseline(profile: str, cpu_flags: Iterable[str] | None) -> None:
    """Raise unless a host with these flags runs this profile's kernels.

    Raises:
        PlatformError: the portable profile on a CPU without AVX2 or FMA, where ATen would fall back to other kernels
            and the run could not match one made elsewhere.
    """
    missing = missing_baseline(profile, cpu_flags)
    if missing:
        raise PlatformError(f"the portable CPU profile needs {' and '.join(missing)}, which this CPU lacks",
                            hint="run with --cpu-profile native on this host (its results will not match portable "
                                 "runs made elsewhere)")
