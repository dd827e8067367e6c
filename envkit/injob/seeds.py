"""Seeds per process, per library and per task: SplitMix64 over the run's seed and a stream key.

The script, its subprocesses, spawn children and every torchrun rank seed ``random``, numpy's legacy generator and
torch with the run's seed itself, as Lightning's ``seed_everything`` does on every rank. A DataLoader worker, a pool
task or an executor task enters a *stream* (``("dataloader", base, rank)``, ``("pool", job, index)``...): its
libraries are reseeded from a seed derived from the run's seed and that key, and unseeded generators it creates get
seeds derived from (run seed, stream, kind, counter).
"""

from . import state

_M64 = (1 << 64) - 1


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def derive_seed(*parts):
    """A 64-bit seed mixed from ints and strings (SplitMix64); stdlib only, so it costs nothing at start-up."""
    h = 0
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
            tag, n = 1 | len(data) << 2, int.from_bytes(data, "little")
        else:
            n = -1 if part is None else int(part)
            tag, n = (2, n) if n >= 0 else (3, -n)
        h = _splitmix64(h ^ tag)
        while True:
            h = _splitmix64(h ^ (n & _M64))
            n >>= 64
            if not n:
                break
    return h


def next_derived(kind):
    """The next derived seed for an unseeded generator of ``kind`` in this process's stream."""
    S = state.S
    count = S.counters.get(kind, 0)
    S.counters[kind] = count + 1
    return derive_seed(S.seed, *S.stream, kind, count)


def seed_for(library):
    """The seed of one library: the run's seed itself, or in a worker or pool task one derived per library.

    Derived per library because random.seed(n) and numpy.random.seed([lo, hi]) fill MT19937 the same way: one
    shared seed would give the two identical streams.
    """
    seed = state.S.process_seed
    return seed if seed == state.S.seed else derive_seed(seed, library)


def enter_stream(stream, process_seed, role=None):
    """Become a worker (or start a pool task): new stream, counters from zero, every loaded library reseeded."""
    from . import importhook

    S = state.S
    S.stream, S.counters, S.process_seed = stream, {}, process_seed
    if role is not None:
        S.report["role"] = role
    importhook.reseed_loaded()
