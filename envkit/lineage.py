"""Chains of runs: the upstream runs whose outputs a run took as inputs, and replaying a whole chain in order.

``envkit replay RUN --upstream`` replays every upstream run first (oldest first, each once, however many runs share
it), then each downstream run on the *replayed* upstream outputs instead of the recorded ones. That is the check that
matters: the chain reproduces from its first stage, and no stage's verdict leans on bytes that only the original
runs made. Each input must still hash to the recorded sha256, so a downstream replay only runs when its upstream
replays gave the very bytes the original used: an upstream replay that is not IDENTICAL stops the chain there, with
that replay's verdict (a downstream verdict on other inputs would compare nothing meaningful).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envkit.engine import Engine
from envkit.errors import EXIT_IDENTICAL, RunNotFoundError, UpstreamError
from envkit.replay import IDENTICAL, ReplayResult, replay
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord

MAX_CHAIN = 1000  # runs in one chain: a bound on a walk through records that may come from elsewhere


@dataclass
class ChainResult:
    """The replays of a chain in the order they ran; ``stopped_at`` is the upstream run whose replay was not
    IDENTICAL (the runs after it were not replayed)."""

    run_id: str
    results: list[ReplayResult] = field(default_factory=list)
    stopped_at: str | None = None

    @property
    def exit_code(self) -> int:
        """The first verdict that is not IDENTICAL decides (0 when every replay is IDENTICAL)."""
        return next((r.exit_code for r in self.results if r.exit_code != EXIT_IDENTICAL), EXIT_IDENTICAL)

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "stopped_at": self.stopped_at,
                "replays": [{"run_id": r.run_id, "replay_of": r.original.run_id, "notes": r.notes,
                             "verdict": r.verdict.to_dict()} for r in self.results]}


def upstream_runs(record: RunRecord) -> list[str]:
    """The distinct runs ``record`` took inputs from, in the order of its inputs."""
    return list(dict.fromkeys(link.run_id for link in record.upstream))


def chain_order(store: FileStore, run_id: str) -> list[str]:
    """Every run of ``run_id``'s chain, each after all of its upstream runs, ``run_id`` last.

    Raises:
        UpstreamError: an upstream run is not in this store, or the chain is longer than :data:`MAX_CHAIN` or
            loops (only a crafted record can).
    """
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[tuple[str, list[str] | None]] = [(run_id, None)]
    while stack:
        current, pending = stack[-1]
        if pending is None:
            if state.get(current) == 2:
                stack.pop()
                continue
            state[current] = 1
            try:
                record = store.read(current)
            except RunNotFoundError:
                raise UpstreamError(f"run {current}, upstream of {stack[-2][0] if len(stack) > 1 else run_id}, "
                                    "is not in this store", hint="import it too, or replay without --upstream") \
                    from None
            pending = upstream_runs(record)
            stack[-1] = (current, pending)
        if pending:
            nxt = pending.pop(0)
            if state.get(nxt) == 1:
                raise UpstreamError(f"the records of runs {current} and {nxt} name each other as upstream")
            if state.get(nxt) != 2:
                stack.append((nxt, None))
            continue
        state[current] = 2
        order.append(current)
        stack.pop()
        if len(order) > MAX_CHAIN:
            raise UpstreamError(f"the chain of run {run_id} has more than {MAX_CHAIN} runs")
    return order


def replay_chain(engine: Engine, store: FileStore, run_id: str,
                 on_replayed: Callable[[ReplayResult], None] | None = None, **options: Any) -> ChainResult:
    """Replay ``run_id`` after every run upstream of it, each downstream run on its upstream replays' outputs.

    Args:
        on_replayed: called with each replay's result as it ends (the CLI prints each verdict then).
        options: passed to :func:`envkit.replay.replay` for every run (``force``, ``rebuild``, ``sink``,
            ``ignore_lines``, ``progress``...); ``mount_overrides`` only for ``run_id`` itself.

    Raises:
        What :func:`envkit.replay.replay` raises, for whichever run of the chain raised it; UpstreamError.
    """
    overrides = options.pop("mount_overrides", None)
    result = ChainResult(run_id)
    replayed: dict[str, str] = {}
    for current in chain_order(store, run_id):
        extra = {"mount_overrides": overrides} if current == run_id else {}
        one = replay(engine, store, current, upstream_sources=dict(replayed), **options, **extra)
        result.results.append(one)
        if on_replayed is not None:
            on_replayed(one)
        if current != run_id and one.verdict.kind != IDENTICAL:
            result.stopped_at = current
            break
        replayed[current] = one.run_id
    return result
