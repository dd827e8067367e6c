"""What a run traces (the ``--trace`` option) and the variables that ask the job's bootstrap for it.

The option is a comma-separated list; the record keeps it in the normalised form :func:`parse_trace` gives:

=================  ===================================================================================================
``auto``           the step trace: parameter digests at step 0, then every 2**k steps, k growing while tracing
                   takes more than 1% of training time (the default)
``N``              the step trace every N optimizer steps (``1``: every step)
``off``            no step trace
``steps:A-B``      also every step from A to B (the reruns that pin a divergence down record its bracket this way)
``ops:K``          an op trace of step K: every ATen op of that step with a digest of its outputs
``ops``            the same for the divergent step pinned last for this script (:func:`resolve_ops_step`)
``save:I+J``       with ``ops:K``: save the inputs and outputs of ops I and J (the second pass, for element counts)
=================  ===================================================================================================

Step numbers count optimizer steps: step 0 is the parameters before the first ``optimizer.step()``, step k the
parameters right after the k-th; an op trace of step k records the work between the (k-1)-th and the k-th
``step()`` call, so it holds the op where a difference first seen at step k arose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envkit.errors import StoreError, TraceError
from envkit.settings import (
    ENV_TRACE,
    ENV_TRACE_FILE,
    ENV_TRACE_OPS,
    ENV_TRACE_OPS_FILE,
    ENV_TRACE_OPS_SAVE,
    ENV_TRACE_STEPS,
)
from envkit.steptrace import PINNED, Divergence, judge_pin
from envkit.store.filestore import FileStore

STEP_TRACE_FILE = "trace.jsonl"
OP_TRACE_FILE = "optrace.jsonl"
_ITEM = re.compile(r"(?P<interval>off|auto|[1-9][0-9]{0,8})|steps:(?P<first>[0-9]{1,9})-(?P<last>[0-9]{1,9})"
                   r"|ops(?::(?P<ops>[1-9][0-9]{0,8}))?|save:(?P<save>[0-9]{1,9}(?:\+[0-9]{1,9})*)")


@dataclass(frozen=True)
class TraceSpec:
    """A parsed ``--trace`` value."""

    interval: str = "auto"  # off | auto | N
    window: tuple[int, int] | None = None  # steps:A-B
    ops: bool = False  # an op trace
    ops_step: int | None = None  # its step; None: the pinned divergent step, not yet resolved
    save: tuple[int, ...] = ()  # ops whose inputs and outputs to save

    def __str__(self) -> str:
        items = [self.interval]
        if self.window is not None:
            items.append(f"steps:{self.window[0]}-{self.window[1]}")
        if self.ops:
            items.append("ops" if self.ops_step is None else f"ops:{self.ops_step}")
        if self.save:
            items.append("save:" + "+".join(str(i) for i in self.save))
        return ",".join(items)

    @property
    def step_trace(self) -> bool:
        """Whether the job records a step trace (periodically or in a window)."""
        return self.interval != "off" or self.window is not None


def parse_trace(text: str) -> TraceSpec:
    """Parse a ``--trace`` value (see the module's table).

    Raises:
        ValueError: an unknown item, an item given twice, a window that ends before it starts, or ``save`` without
            ``ops:K``; the message says which.
    """
    interval, window, ops, ops_step, save = None, None, False, None, ()
    for item in (part.strip() for part in str(text).split(",")):
        m = _ITEM.fullmatch(item)
        if m is None:
            raise ValueError(f"{item!r} is not auto, off, a step interval N, steps:A-B, ops, ops:STEP or save:I+J")
        if m["interval"] is not None:
            if interval is not None:
                raise ValueError(f"two step-trace intervals ({interval} and {item})")
            interval = m["interval"]
        elif m["first"] is not None:
            window = (int(m["first"]), int(m["last"]))
            if window[0] > window[1]:
                raise ValueError(f"{item!r}: the window ends before it starts")
        elif item.startswith("ops"):
            if ops:
                raise ValueError("two op traces; one run traces the ops of one step")
            ops, ops_step = True, int(m["ops"]) if m["ops"] else None
        else:
            save = tuple(sorted({int(i) for i in m["save"].split("+")}))
    if save and ops_step is None:
        raise ValueError("save:I needs an op trace of a given step (ops:STEP)")
    return TraceSpec(interval or "auto", window, ops, ops_step, save)


def trace_environment(trace: str, meta_dir: str) -> dict[str, str]:
    """The ``ENVKIT_TRACE*`` variables for a job whose trace files go to ``meta_dir`` (a path in its container).

    Raises:
        TraceError: ``trace`` does not parse, or names an op trace whose step was never resolved.
    """
    spec = parse_recorded(trace)
    env: dict[str, str] = {}
    if spec.step_trace:
        env[ENV_TRACE_FILE] = f"{meta_dir}/{STEP_TRACE_FILE}"
        if spec.interval != "off":
            env[ENV_TRACE] = spec.interval
        if spec.window is not None:
            env[ENV_TRACE_STEPS] = f"{spec.window[0]}-{spec.window[1]}"
    if spec.ops:
        if spec.ops_step is None:
            raise TraceError("the op trace's step was not resolved", hint="give one: --trace ops:STEP")
        env[ENV_TRACE_OPS] = str(spec.ops_step)
        env[ENV_TRACE_OPS_FILE] = f"{meta_dir}/{OP_TRACE_FILE}"
        if spec.save:
            env[ENV_TRACE_OPS_SAVE] = ",".join(str(i) for i in spec.save)
    return env


def parse_recorded(trace: str) -> TraceSpec:
    """A record's ``trace`` field (or a job's) as a spec.

    Raises:
        TraceError: it does not parse (a record edited by hand).
    """
    try:
        return parse_trace(trace)
    except ValueError as exc:
        raise TraceError(f"trace setting {trace!r}: {exc}") from None


def resolve_ops_step(trace: str, store: FileStore, script: str) -> str:
    """``trace`` with ``ops`` given its step: the divergent step found last for a run of ``script`` in the store (a
    replay's verdict that names an exact step, or the reruns of ``envkit diff --pin``). Other values come back as
    they are.

    Raises:
        TraceError: ``ops`` without a step and no divergent step known for the script.
    """
    spec = parse_recorded(trace)
    if not spec.ops or spec.ops_step is not None:
        return trace
    step = pinned_step(store, script)
    if step is None:
        raise TraceError(f"no divergent step is known for {script} in this store, so `--trace ops` has none to trace",
                         hint="give the step (--trace ops:STEP), or find it with `envkit replay RUN` or "
                              "`envkit diff --pin RUN_A RUN_B`")
    return str(TraceSpec(spec.interval, spec.window, True, step, spec.save))


def pinned_step(store: FileStore, script: str, limit: int = 200) -> int | None:
    """The exact divergent step found most recently for a run of ``script``, or None (the newest ``limit`` runs of
    the script that are replays or reruns are looked at)."""
    rows = [r for r in store.list().rows if r.get("script") == script and r.get("replay_of")][:limit]
    records = []
    for row in rows:
        try:
            records.append(store.read(row["run_id"]))
        except StoreError:
            continue
    for record in records:  # newest first
        divergence = (record.verdict or {}).get("divergence") or {}
        if divergence.get("step") is not None and "error" not in divergence:
            d = Divergence.from_dict(divergence)
            if d.op_step is not None:
                return d.op_step
        window = parse_recorded(record.trace).window if record.pin_for else None
        partner = next((r for r in records if window and r.pin_for == record.pin_for and r.trace == record.trace
                        and r.replay_of != record.replay_of), None)
        if partner is not None:
            found = judge_pin(store.run_dir(record.run_id), store.run_dir(partner.run_id), *window,
                              [record.run_id, partner.run_id])
            if found.outcome == PINNED:
                return found.step
    return None
