"""The seeds of a sweep: parsed from ``--seeds 0-9`` / ``1,5,9`` / ``0-3,10``, or derived from one base seed (``--n``).

Rules, so that a sweep's statistics mean what they say:

* A seed is an integer in 0..2**32-1 (what numpy's legacy generator and ``PYTHONHASHSEED`` accept).
* At most :data:`MAX_SEEDS` seeds per sweep; a range is checked for size before it is expanded.
* A seed given twice is refused, not silently dropped: two runs of the same seed are the same run (bitwise, under
  envkit), and counting it twice would shrink the standard deviation and the confidence interval.
* The order given is kept (it is the order the runs are started in).

Derived seeds (``--n N --base-seed B``) are SplitMix64 mixes of (B, "sweep", i) (the in-job seeds' own
:func:`envkit.injob.seeds.derive_seed`), cut to 32 bits; a collision is
skipped by drawing the next index, so the N seeds are distinct and the same for the same B on every machine.
"""

from __future__ import annotations

import re

from envkit.errors import SweepError
from envkit.injob.seeds import derive_seed

MAX_SEED = 2**32 - 1
MAX_SEEDS = 10_000
# ASCII digits only (str.isdigit also accepts "²" and other scripts' digits); ten digits are enough for 2**32-1.
_ITEM = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?", re.ASCII)
_HINT = "give seeds as a range 0-9, a list 1,5,9, a mix 0-3,10, or --n 10 for seeds derived from one base seed"


def parse_seeds(text: str) -> list[int]:
    """Parse a seed list: ``0-9``, ``1,5,9``, ``0-3,10`` (spaces around commas allowed).

    Args:
        text: what the user gave to ``--seeds``.

    Returns:
        The seeds in the order given, each in 0..2**32-1, no duplicates, at most :data:`MAX_SEEDS`.

    Raises:
        SweepError: the text is malformed, a seed is out of range, a range runs backwards, a seed repeats, or
            there are too many; the message quotes the offending item.
    """
    if not isinstance(text, str) or not text.strip():
        raise SweepError("no seeds given", hint=_HINT)
    seeds: list[int] = []
    seen: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        match = _ITEM.fullmatch(item)
        if match is None:
            if item.startswith("-") and _ITEM.fullmatch(item[1:]):
                raise SweepError(f"seed {item} is negative", hint=f"seeds are 0..{MAX_SEED}")
            what = "an empty item" if not item else f"{item!r}"
            raise SweepError(f"malformed seed list {text.strip()!r}: {what} is not a seed or a range a-b", hint=_HINT)
        lo = _seed(match.group(1), text)
        hi = lo if match.group(2) is None else _seed(match.group(2), text)
        if hi < lo:
            raise SweepError(f"seed range {item!r} runs backwards", hint=f"write it as {hi}-{lo}")
        if len(seeds) + (hi - lo + 1) > MAX_SEEDS:
            raise SweepError(
                f"{text.strip()!r} gives more than {MAX_SEEDS} seeds", hint=f"a sweep takes at most {MAX_SEEDS} seeds"
            )
        for seed in range(lo, hi + 1):
            if seed in seen:
                raise SweepError(
                    f"seed {seed} is given twice in {text.strip()!r}",
                    hint="each seed once: a repeated seed is the same run again and would understate the spread",
                )
            seen.add(seed)
            seeds.append(seed)
    return seeds


def derive_seeds(n: int, base_seed: int = 0) -> list[int]:
    """``n`` distinct 32-bit seeds derived from ``base_seed``, the same on every machine.

    Raises:
        SweepError: ``n`` is not in 1..MAX_SEEDS or ``base_seed`` not in 0..2**32-1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SEEDS:
        raise SweepError(f"--n {n!r} is not a seed count from 1 to {MAX_SEEDS}", hint=_HINT)
    if isinstance(base_seed, bool) or not isinstance(base_seed, int) or not 0 <= base_seed <= MAX_SEED:
        raise SweepError(f"base seed {base_seed!r} is not in 0..{MAX_SEED}", hint="pick a base seed such as 0 or 42")
    seeds: list[int] = []
    seen: set[int] = set()
    index = 0
    # Collisions among 10,000 draws of 32 bits happen about once in a hundred bases: skip them, deterministically.
    while len(seeds) < n:
        seed = derive_seed(base_seed, "sweep", index) & MAX_SEED
        index += 1
        if seed not in seen:
            seen.add(seed)
            seeds.append(seed)
    return seeds


def choose_seeds(seeds: str | None = None, n: int | None = None, base_seed: int | None = None) -> list[int]:
    """The sweep's seeds from the CLI's options: exactly one of ``--seeds`` or ``--n`` (with ``--base-seed``).

    Raises:
        SweepError: both or neither given, ``--base-seed`` without ``--n``, or a bad value in either.
    """
    if seeds is not None and n is not None:
        raise SweepError("--seeds and --n are both given", hint="give one: --seeds 0-9, or --n 10 [--base-seed 42]")
    if seeds is not None:
        if base_seed is not None:
            raise SweepError("--base-seed goes with --n, not with --seeds", hint="e.g. --n 10 --base-seed 42")
        return parse_seeds(seeds)
    if n is not None:
        return derive_seeds(n, 0 if base_seed is None else base_seed)
    raise SweepError("no seeds given", hint=_HINT)


def _seed(digits: str, text: str) -> int:
    value = int(digits)
    if value > MAX_SEED:
        raise SweepError(f"seed {digits} in {text.strip()!r} is out of range", hint=f"seeds are 0..{MAX_SEED}")
    return value
