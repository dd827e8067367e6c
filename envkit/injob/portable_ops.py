"""CPU kernels that give the same bits on every x86-64 CPU, for the torch ops whose stock kernels do not.

Under the portable CPU profile (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, ``MKL_CBWR=COMPATIBLE``,
fixed threads) torch's kernels take the same code paths on Intel and AMD processors, with one exception found: the
elementwise math that ATen hands to MKL's vector math library (VML). With ``MKL_CBWR=COMPATIBLE`` VML runs its SSE4.2
("EX") kernels on both vendors (on AMD it always does), and some of them start from ``rcpps``/``rsqrtps``,
approximation instructions whose low bits each CPU family (and each emulator) defines its own way, although MKL
documents the compatible branch as free of them. The results then differ in the last bit from vendor to vendor, and
Adam's ``exp_avg_sq.sqrt()`` carries that into the weights.

Measured on torch 2.13 (MKL 2024.2): the VML kernels that use those instructions back ``sqrt``, ``asin``, ``acos``
(``rsqrtps``), ``atan``, ``tan``, ``log2``, ``log10`` and float64 ``log`` (``rcpps``). :func:`install` replaces the CPU
kernels of exactly these ops with compositions of IEEE operations (add, multiply, divide, hardware square root) and
SLEEF functions compiled for the pinned ATen capability, which give the same bits on any CPU:

- ``sqrt`` (and ``pow(x, 0.5)``, ``_foreach_sqrt``, ``cdist``... everything that reaches ``aten::sqrt``) is correctly
  rounded: float32/16/bfloat16 through float64, where double rounding is provably harmless for square roots; float64
  through an exact-residual correction (Dekker products), so it is the IEEE result, as numpy's.
- ``atan``, ``asin``, ``acos``, ``tan``, ``log2``, ``log10``, ``log`` (float64 only) are computed in float64 from
  ``atan2``, ``log1p`` (SLEEF), ``sin``, ``cos`` (VML kernels without approximation instructions) and exact scaling,
  then rounded: float32 results were correctly rounded on every sample checked, float64 ones are within 1.7 ulps.
  They are not always the bits the stock kernel gives on either CPU.

Not covered: float64 ``logit`` (MKL ``vdLn`` called directly by ATen); other MKL domains (sparse BLAS, LAPACK) were
not examined op by op.

Integer inputs are promoted as the stock kernels promote them; complex inputs and float32 ``log`` keep the stock kernel
(they do not go through the affected code). The stock kernel is fetched with
``torch._C._dispatch_get_computed_kernel_for_dispatch_key`` before it is replaced, so other dtypes still reach it.

Part of the in-job package (``envkit_injob.portable_ops`` in images), installed by the bootstrap under the portable
profile; it imports only the standard library at module level and is handed ``torch`` by :func:`install`.
"""

from __future__ import annotations

import os
import warnings

# Ops whose stock CPU kernels run VML code with approximation instructions (see the module docstring). Each entry:
# op name -> dtypes (by name) the override handles; other dtypes call the stock kernel.
_FLOATS = ("float16", "bfloat16", "float32", "float64")
OVERRIDDEN: dict[str, tuple[str, ...]] = {
    "sqrt": _FLOATS,
    "asin": _FLOATS,
    "acos": _FLOATS,
    "atan": _FLOATS,
    "tan": _FLOATS,
    "log2": _FLOATS,
    "log10": _FLOATS,
    "log": ("float64",),  # float32 log runs a VML kernel without approximation instructions: left alone
}
REQUIRED_ENV = {"MKL_CBWR": "COMPATIBLE"}  # tan and the stock exp/log/tanh/erf kernels rely on MKL's shared path

_LN2 = 0.6931471805599453
_LOG2E = 1.4426950408889634
_LOG10E = 0.4342944819032518
_LOG10_2 = 0.30102999566398120
_SQRT_HALF = 0.7071067811865476
_SPLIT = 134217729.0  # 2**27 + 1: Veltkamp's constant that splits a double into two 26-bit halves
_CHUNK = 1 << 16  # elements per slice: the float64 temporaries of one slice stay in cache and are reused

_state: dict[str, object] = {"library": None, "installed": ()}


def install(torch) -> tuple[str, ...]:
    """Replace the CPU kernels listed in :data:`OVERRIDDEN` with portable ones; idempotent.

    Args:
        torch: the imported torch module.

    Returns:
        The names of the operator overloads now served by this module.

    Raises:
        RuntimeError: ``MKL_CBWR`` is not ``COMPATIBLE`` (the portable profile's environment is missing), or this
            torch cannot hand out its stock kernels (older than the 2.13 this was measured on).
    """
    if _state["installed"]:
        return _state["installed"]
    for name, value in REQUIRED_ENV.items():
        if os.environ.get(name) != value:
            raise RuntimeError(f"portable ops need {name}={value} in the environment (got {os.environ.get(name)!r}); "
                               "use the portable CPU profile's environment")
    get_kernel = getattr(torch._C, "_dispatch_get_computed_kernel_for_dispatch_key", None)
    if get_kernel is None:
        raise RuntimeError(f"torch {torch.__version__} cannot hand out its stock kernels; portable ops need torch>=2.13")
    math = _Math(torch)
    cpu = torch._C.DispatchKey.CPU
    library = torch.library.Library("aten", "IMPL")
    done = []
    with warnings.catch_warnings():
        # torch warns once that a stock kernel is overridden: that is the point here.
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for op, dtypes in OVERRIDDEN.items():
            fn = getattr(math, op)
            handled = {getattr(torch, d) for d in dtypes}
            for overload, make in ((op, _functional), (f"{op}_", _inplace), (f"{op}.out", _out)):
                stock = get_kernel(f"aten::{overload}", cpu)
                library.impl(overload, make(torch, fn, handled, stock), "CPU", with_keyset=True)
                done.append(overload)
        for overload, make in (("pow.Tensor_Scalar", _functional), ("pow_.Scalar", _inplace),
                               ("pow.Tensor_Scalar_out", _out)):
            stock = get_kernel(f"aten::{overload}", cpu)
            library.impl(overload, make(torch, math.sqrt, set(math.floats), stock, half_power=True), "CPU",
                         with_keyset=True)
            done.append(overload)
    _state["library"] = library  # the registrations live as long as this object
    _state["installed"] = tuple(done)
    return _state["installed"]


# --- dispatcher glue ---------------------------------------------------------------------------------------------
def _takes(torch, x, handled, exponent, half_power) -> bool:
    """Whether the override serves this call (else the stock kernel does)."""
    if half_power and exponent != 0.5:
        return False
    if x.is_floating_point() or x.is_complex():
        return x.dtype in handled
    return torch.get_default_dtype() in handled  # integers compute in the default dtype


def _promote(torch, x):
    # sqrt(int tensor) computes in the default float dtype, like the stock structured kernel.
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _sliced(torch, fn, x):
    """fn over x, slice by slice (fn is elementwise): a few slice-sized temporaries instead of many full-sized ones."""
    flat = x.reshape(-1)
    if flat.numel() <= _CHUNK:
        return fn(flat).view(x.shape)
    out = torch.empty_like(flat)
    for start in range(0, flat.numel(), _CHUNK):
        out[start:start + _CHUNK] = fn(flat[start:start + _CHUNK])
    return out.view(x.shape)


def _functional(torch, fn, handled, stock, half_power=False):
    def kernel(keyset, x, *exponent):
        if not _takes(torch, x, handled, exponent[0] if exponent else None, half_power):
            return stock.call_boxed(keyset, x, *exponent)
        return _sliced(torch, fn, _promote(torch, x))

    return kernel


def _inplace(torch, fn, handled, stock, half_power=False):
    def kernel(keyset, x, *exponent):
        if not x.is_floating_point() or not _takes(torch, x, handled, exponent[0] if exponent else None, half_power):
            return stock.call_boxed(keyset, x, *exponent)  # also raises the stock error for integer tensors
        return x.copy_(_sliced(torch, fn, x))

    return kernel


def _out(torch, fn, handled, stock, half_power=False):
    def kernel(keyset, x, *exponent, out):
        value = _promote(torch, x)
        if out.dtype != value.dtype or not _takes(torch, x, handled, exponent[0] if exponent else None, half_power):
            return stock.call_boxed(keyset, x, *exponent, out=out)
        result = _sliced(torch, fn, value)
        if out.shape != result.shape:
            out.resize_(result.shape)
        return out.copy_(result)

    return kernel


# --- the arithmetic ----------------------------------------------------------------------------------------------
class _Math:
    """The portable kernels. Each takes a floating tensor and returns a new one of the same dtype.

    Narrow types are computed in float64 and rounded once; float64 is computed in float64. Every building block is an
    IEEE basic operation, a hardware square root (inside ``rsqrt``), ``frexp``/bit assembly (exact), or a SLEEF
    function (``atan2``, ``log1p``) compiled for the pinned capability, or a VML kernel shown free of approximation
    instructions (``sin``, ``cos``).
    """

    def __init__(self, torch) -> None:
        self.t = torch
        self.floats = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        self._inf = torch.tensor(float("inf"), dtype=torch.float64)
        self._zero = torch.tensor(0.0, dtype=torch.float64)

    def _wide(self, x):
        return x if x.dtype == self.t.float64 else x.to(self.t.float64)

    def sqrt(self, x):
        """Correctly rounded square root."""
        t = self.t
        if x.dtype == t.float64:
            return self._sqrt64(x)
        # 1 / rsqrt(d) rounds three times (sqrt, divide, divide): within 3 * 2**-53 of sqrt(d), relative, and exact
        # for 0 and inf. The square root of a p-bit number lies more than 2**-(2p+3) from every midpoint between
        # p-bit numbers, beyond that error for p <= 24, so one rounding to the narrow type is the correctly rounded
        # root (the argument of Figueroa's "double rounding is innocuous for sqrt").
        return x.to(t.float64).rsqrt_().reciprocal_().to(x.dtype)

    def _sqrt64(self, d):
        t = self.t
        m, exp = t.frexp(d)  # d = m * 2**exp, m in [0.5, 1): exact; 0, inf and nan come back as themselves
        odd = exp & 1
        m.mul_(odd + 1)  # m in [0.5, 2) and an even exponent left: no overflow or underflow below
        half_exp = (exp - odd) >> 1
        y = m.rsqrt().reciprocal_()  # within 2 ulps of sqrt(m)
        for _ in range(2):  # each pass moves y one ulp towards the correctly rounded root
            y = self._round_root(m, y)
        scale = ((half_exp.to(t.int64) + 1023) << 52).view(t.float64)  # 2**half_exp, exact
        return y.mul_(scale).copysign_(d)  # negative inputs are nan already; the sign keeps sqrt(-0) == -0

    def _round_root(self, m, y):
        """y or its neighbour, whichever is the correctly rounded sqrt(m), given y within one ulp of it."""
        t = self.t
        p = y * y
        c = y * _SPLIT
        hi = c.sub_(c - y)
        lo = y - hi
        err = (hi * hi).sub_(p).add_(hi * lo * 2.0).add_(lo * lo)  # y*y == p + err exactly (Dekker's product)
        resid = (m - p).sub_(err)  # m - y*y; exact wherever it decides the comparison below
        up = t.nextafter(y, self._inf)
        down = t.nextafter(y, self._zero)
        # (y + u/2)**2 = y*y + y*u + u*u/4, and residuals are multiples of a grain coarser than u*u/4: comparing
        # with y*u alone tells on which side of the midpoint the exact root lies (nan and inf compare false).
        go_up = resid > y * (up - y)
        go_down = (resid + y * (y - down)) <= 0
        return t.where(go_up, up, t.where(go_down, down, y))

    def atan(self, x):
        d = self._wide(x)
        return self.t.atan2(d, self.t.ones_like(d)).to(x.dtype)

    def _cosine_side(self, d):
        return self._sqrt64((1.0 - d) * (1.0 + d))

    def asin(self, x):
        d = self._wide(x)
        return self.t.atan2(d, self._cosine_side(d)).to(x.dtype)

    def acos(self, x):
        d = self._wide(x)
        return self.t.atan2(self._cosine_side(d), d).to(x.dtype)

    def tan(self, x):
        d = self._wide(x)
        return (self.t.sin(d) / self.t.cos(d)).to(x.dtype)

    def _log_parts(self, d):
        """(e, l) with d = 2**e * m, m in [sqrt(1/2), sqrt(2)), l = log1p(m - 1): no cancellation near 1."""
        t = self.t
        mant, exp = t.frexp(d)
        low = mant < _SQRT_HALF
        m = t.where(low, mant * 2.0, mant)
        e = exp.to(t.float64) - low.to(t.float64)
        return e, t.log1p(m - 1.0)  # m - 1 is exact (Sterbenz)

    def log(self, x):
        e, l = self._log_parts(self._wide(x))
        return (e * _LN2 + l).to(x.dtype)

    def log2(self, x):
        e, l = self._log_parts(self._wide(x))
        return (e + l * _LOG2E).to(x.dtype)

    def log10(self, x):
        e, l = self._log_parts(self._wide(x))
        return (e * _LOG10_2 + l * _LOG10E).to(x.dtype)
