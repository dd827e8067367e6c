"""envkit: reproducible ML environments.

The public Python API is small and imports nothing heavy: :func:`seed_everything`, :func:`rng_state` and
:func:`set_rng_state` work in a plain Python process, without containers.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "seed_everything", "rng_state", "set_rng_state"]


def seed_everything(seed: int, determinism: str = "strict", threads: int | None = None) -> dict[str, Any]:
    """Seed every generator (random, numpy, torch CPU and CUDA) and apply a determinism level.

    Args:
        seed: the run's seed (0 <= seed < 2**32).
        determinism: ``strict``, ``warn``, ``seed`` or ``off``.
        threads: pin torch / OpenMP thread counts to this number (``None``: leave as is).

    Returns:
        A report of what was seeded and which flags are in effect.
    """
    from envkit.run import bootstrap

    return bootstrap.seed_everything(seed, determinism=determinism, threads=threads)


def rng_state() -> dict[str, Any]:
    """Capture the state of every generator seeded by :func:`seed_everything` (for checkpoints)."""
    from envkit.run import bootstrap

    return bootstrap.rng_state()


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore generator states captured by :func:`rng_state`; a resumed run continues bit-identically."""
    from envkit.run import bootstrap

    bootstrap.set_rng_state(state)
