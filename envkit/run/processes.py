"""How many processes a job had, and its world size, from the bootstrap's per-process reports.

Every Python process of a job that the bootstrap seeded leaves one report (the launcher of ``torchrun``, each rank,
DataLoader workers, pool workers, subprocesses). A rank's report carries ``WORLD_SIZE`` as the process saw it;
images built before that field existed are counted by their distinct ranks.
"""

from __future__ import annotations

from typing import Any


def count_processes(reports: list[dict[str, Any]]) -> tuple[int, int]:
    """``(processes, world_size)``: the number of reports, and the torch.distributed world size (1 when no process
    ran as a rank)."""
    sizes = [r.get("world_size") for r in reports]
    declared = max((s for s in sizes if isinstance(s, int) and not isinstance(s, bool) and s > 0), default=0)
    ranks = {r.get("rank") for r in reports if isinstance(r.get("rank"), int) and not isinstance(r.get("rank"), bool)}
    return len(reports), max(declared, len(ranks), 1)
