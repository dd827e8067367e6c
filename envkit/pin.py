"""Pin a divergence down: rerun the jobs of two runs, tracing more each time, to name the exact step and the first op.

Which runs are rerun. Both recorded runs' jobs, each on its own recorded image, code snapshot, inputs, seed, thread
count, determinism level and environment (the replay's own :func:`~envkit.replay.replay_job`), on this host, as new
runs that name the pair in ``pin_for`` and the run whose job they rerun in ``replay_of``. For a replay pair that is
the original's job twice: a difference that comes from inside the job (a race, ``os.urandom``, a nondeterministic
kernel) happens again in the reruns and is pinned; one that came from the two runs' hosts does not, and the reruns say
so. When the two runs did differ in what they ran (seed, code, inputs, environment, image), the reruns differ in the
same way.

Three passes, each a pair of reruns, each only when the one before it left the question open:

1. The exact step (:func:`pin_step`): when the recorded step traces bracket the divergence between the last equal
   recorded step a and the first differing one b, with b > a + 1, the reruns record every step from a to b
   (``--trace off,steps:A-B``); the first step at which they part is the exact one.
2. The first op (:func:`pin_op`): the reruns trace every ATen op of that step (``off,ops:K``) unless both runs
   recorded an op trace of it themselves (``envkit run --trace ops:K``).
3. The element counts: the reruns trace the step again and save the inputs and outputs of the op where the second
   pass parted (``off,ops:K,save:I``); their saved tensors give how many elements differ and by how much.

Reruns made earlier for the same pair are found in the store and used again, so ``envkit diff`` shows what the replay
or an earlier ``envkit diff --pin`` found without rerunning anything (:func:`find`, ``rerun=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.engine import Engine
from envkit.errors import EnvkitError, JobError, StoreError
from envkit.optdiff import OpComparison, OpFinding, compare_optraces, optrace_files, read_optrace
from envkit.replay import Verdict, acquire_image, host_differences, replay_job, replay_upstream
from envkit.run.executor import Sink, execute
from envkit.run.mounts import replay_mounts
from envkit.run.tracing import TraceSpec
from envkit.steptrace import (
    FAILED,
    PINNED,
    Divergence,
    PinnedStep,
    compare_traces,
    judge_pin,
    pinned_divergence,
    trace_files,
)
from envkit.store.bundle import is_imported
from envkit.store.filestore import FileStore
from envkit.store.record import RunRecord

Progress = Callable[[str], None]


@dataclass
class Findings:
    """What pinning found for a pair of runs; what it could not, and what would find more."""

    pinned: PinnedStep | None = None
    ops: OpFinding | None = None
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # reruns that `envkit diff --pin` would make

    def to_dict(self) -> dict[str, Any]:
        return {"pinned": self.pinned.to_dict() if self.pinned else None,
                "ops": self.ops.to_dict() if self.ops else None, "notes": self.notes, "hints": self.hints}


# --- the reruns --------------------------------------------------------------------------------------------------
class _Pair:
    """Two runs being pinned, the reruns of their jobs found in the store, and the means to make more."""

    def __init__(self, engine: Engine | None, store: FileStore, a: RunRecord, b: RunRecord, rerun: bool,
                 progress: Progress | None) -> None:
        self.engine, self.store, self.a, self.b = engine, store, a, b
        self.rerun, self.progress = rerun, progress or (lambda _msg: None)
        self.now: dict[str, Any] | None = None
        self.found = _pin_runs(store, a.run_id, b.run_id)

    def runs(self, trace_a: str, trace_b: str, why: str) -> tuple[RunRecord, RunRecord] | None:
        """The reruns of A's job with ``trace_a`` and of B's with ``trace_b``: found, or made when rerunning is on."""
        got = [self.found.get((self.a.run_id, trace_a)), self.found.get((self.b.run_id, trace_b))]
        if None in got and not self.rerun:
            return None
        for side, (record, trace) in enumerate(((self.a, trace_a), (self.b, trace_b))):
            if got[side] is None:
                self.progress(f"{why}: rerunning run {'AB'[side]}'s job ({record.run_id}), --trace {trace}")
                made = self._rerun(record, trace)
                if made.status != "succeeded":  # no use running the other side: there is nothing to compare with
                    raise JobError(f"the rerun {made.run_id} of run {'AB'[side]}'s job ended {made.status}",
                                   hint=f"its output is in the store: envkit show {made.run_id}")
                got[side] = self.found[(record.run_id, trace)] = made
        return got[0], got[1]

    def _rerun(self, record: RunRecord, trace: str) -> RunRecord:
        from envkit.fingerprint import host_fingerprint

        assert self.engine is not None
        if self.now is None:
            self.now = host_fingerprint(self.engine)
        layout = self.store.layout(record.run_id)
        # The inputs as the run's own replay takes them (an imported run's inputs cannot be found here: MountError;
        # an input taken from an earlier run's output must still hash as recorded).
        overrides: dict[str, Path] = {}
        upstream = replay_upstream(self.store, record, {}, overrides)
        mounts = replay_mounts(record.mounts, overrides, imported=is_imported(layout))
        image_id, notes = acquire_image(self.engine, record, layout, rebuild=False)
        mismatch = any(d.changes_numerics for d in host_differences(record, self.now))
        job = replay_job(record, layout, image_id, mismatch, mounts)
        job.upstream = upstream
        job.trace, job.pin_for = trace, [self.a.run_id, self.b.run_id]
        job.notes = [*notes, f"a pin run of {self.a.run_id} and {self.b.run_id}: the job of {record.run_id} again, "
                             f"--trace {trace}"]
        return execute(self.engine, self.store, job, sink=Sink(None, None), fingerprint=self.now)

    def folder(self, record: RunRecord) -> Path:
        return self.store.run_dir(record.run_id)


def _pin_runs(store: FileStore, a_id: str, b_id: str) -> dict[tuple[str, str], RunRecord]:
    """``(rerun job's run id, trace) -> the newest such rerun that succeeded``, among the pin runs of this pair."""
    found: dict[tuple[str, str], RunRecord] = {}
    for row in store.list().rows:  # newest first
        if row.get("replay_of") not in (a_id, b_id) or row.get("status") != "succeeded":
            continue
        try:
            record = store.read(row["run_id"])
        except StoreError:
            continue  # a damaged record is no evidence
        if sorted(record.pin_for) == sorted([a_id, b_id]) and record.replay_of is not None:
            found.setdefault((record.replay_of, record.trace), record)
    return found


# --- 1. the exact step -------------------------------------------------------------------------------------------
def pin_step(pair: _Pair, divergence: Divergence) -> PinnedStep | None:
    """Rerun both jobs recording every step of the divergence's bracket, and judge where they part; None when the
    reruns are neither in the store nor to be made.

    Raises:
        EnvkitError: a rerun could not run (its image, an input) or did not succeed (JobError).
    """
    first, last = divergence.bracket
    trace = str(TraceSpec(interval="off", window=(first, last)))
    runs = pair.runs(trace, trace, f"pinning the step between {first} and {last}")
    if runs is None:
        return None
    ra, rb = runs
    return judge_pin(pair.folder(ra), pair.folder(rb), first, last, [ra.run_id, rb.run_id])


# --- 2. and 3. the first op --------------------------------------------------------------------------------------
def own_op_traces(store: FileStore, a: RunRecord, b: RunRecord) -> OpComparison | None:
    """The comparison of the op traces both runs recorded themselves (``--trace ops:K``), when both did."""
    fa, fb = store.run_dir(a.run_id), store.run_dir(b.run_id)
    if not optrace_files(fa) or not optrace_files(fb):
        return None
    return compare_optraces(fa, fb)


def own_op_step(store: FileStore, a: RunRecord) -> int | None:
    files = optrace_files(store.run_dir(a.run_id))
    return read_optrace(next(iter(files.values()))).header.get("step") if files else None


def pin_op(pair: _Pair, step: int, own: OpComparison | None) -> OpFinding | None:
    """The first op where the runs part in ``step``, from their own op traces or reruns, with the element counts of
    a second pass when it parts at the same op; None when the reruns it needs are not to be made."""
    runs: list[str] = []
    if own is not None:
        comparison = own
    else:
        trace = str(TraceSpec(interval="off", ops=True, ops_step=step))
        made = pair.runs(trace, trace, f"tracing the ops of step {step}")
        if made is None:
            return None
        comparison = compare_optraces(pair.folder(made[0]), pair.folder(made[1]))
        runs = [made[0].run_id, made[1].run_id]
    d = comparison.divergence
    if d is None or d.kind != "output" or d.tensors:
        return OpFinding(step, comparison, runs)
    saves = pair.runs(str(TraceSpec(interval="off", ops=True, ops_step=step, save=(d.index_a,))),
                      str(TraceSpec(interval="off", ops=True, ops_step=step, save=(d.index_b,))),
                      f"saving op #{d.index_a} of step {step}")
    if saves is None:
        return OpFinding(step, comparison, runs)
    saved = compare_optraces(pair.folder(saves[0]), pair.folder(saves[1]))
    s = saved.divergence
    ids = [saves[0].run_id, saves[1].run_id]
    if s is not None and (s.kind, s.index_a, s.index_b) == ("output", d.index_a, d.index_b) and s.tensors:
        return OpFinding(step, comparison, runs, saved, ids)
    where = "agree there" if s is None else f"part at #{s.index_a} instead"
    return OpFinding(step, comparison, runs, None, ids,
                     note=f"the reruns that saved op #{d.index_a} {where}: the difference did not happen again the "
                          "same way on this host, so there are no element counts")


# --- all of it -----------------------------------------------------------------------------------------------------
def find(engine: Engine | None, store: FileStore, a: RunRecord, b: RunRecord, rerun: bool = False,
         progress: Progress | None = None) -> Findings:
    """The exact step and the first op where two runs part, as far as the store holds them; with ``rerun``, the
    missing reruns are made (``envkit diff --pin``).

    With ``rerun``, a rerun that cannot start (its image is gone, an input changed) or that fails ends the pinning
    there: what was found so far comes back, with a note that says why it stopped.

    Raises:
        TraceError: a recorded trace is malformed.
    """
    out = Findings()
    if a.run_id == b.run_id:
        return out
    pair = _Pair(engine, store, a, b, rerun, progress)
    fa, fb = store.run_dir(a.run_id), store.run_dir(b.run_id)
    d = compare_traces(fa, fb).divergence if trace_files(fa) and trace_files(fb) else None
    own = own_op_traces(store, a, b)
    own_step = own_op_step(store, a) if own is not None else None
    if rerun and d is None and own is None:
        out.notes.append("nothing to pin: the runs have no step traces and no op traces to start from")
    elif rerun and d is not None and d.op_step is None and not d.pinnable:
        out.notes.append("nothing to pin: the runs part at initialisation or after training, not in a training step")
    try:
        _find_step_and_op(pair, out, d, own, own_step)
    except EnvkitError as exc:  # a rerun that could not run or failed: show what was found, and why it stopped
        if not rerun:
            raise
        out.notes.append(f"--pin stopped: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
    return out


def _find_step_and_op(pair: _Pair, out: Findings, d: Divergence | None, own: OpComparison | None,
                      own_step: int | None) -> None:
    a, b = pair.a, pair.b
    hint = f"`envkit diff --pin {a.run_id} {b.run_id}` reruns both jobs"
    step = None
    if d is not None and d.pinnable:
        out.pinned = pin_step(pair, d)
        if out.pinned is None:
            first, last = d.bracket
            out.hints.append(f"{hint} with every step from {first} to {last} traced, to name the exact step and the "
                             "first op that differs")
        elif out.pinned.outcome == PINNED:
            step = out.pinned.step
    elif d is not None:
        step = d.op_step  # None: at initialisation or after training, no training step's ops to trace
    if step is None or step == own_step:
        if own is not None and own_step is not None:
            out.ops = pin_op(pair, own_step, own)
    else:
        out.ops = pin_op(pair, step, None)
        if out.ops is None:
            out.hints.append(f"{hint} with the ops of step {step} traced, to name the first op that differs")
            if own is not None and own_step is not None:
                out.ops = OpFinding(own_step, own)
                out.notes.append(f"the runs' own op traces are of step {own_step}; they part at step {step}")
    first_op = out.ops.divergence if out.ops is not None else None
    if first_op is not None and first_op.kind == "output" and not first_op.tensors and not out.ops.saved_runs:
        out.hints.append(f"{hint} saving the inputs and outputs of op #{first_op.index_a} of step {out.ops.step}, to "
                         "count the elements that differ")


def replay_pinner(engine: Engine, store: FileStore, progress: Progress | None = None) -> Callable[..., None]:
    """A hook for :func:`envkit.replay.replay`: when the verdict's divergence is bracketed by recorded steps more than
    one step apart, rerun both jobs to pin the exact step, and put what was found into the verdict."""

    def hook(original: RunRecord, record: RunRecord, verdict: Verdict, forced: list[Any]) -> None:
        div = verdict.divergence
        if not div or div.get("step") is None or "error" in div:
            return
        d = Divergence.from_dict(div)
        if not d.pinnable:
            return
        first, last = d.bracket
        if forced:
            pinned = PinnedStep(FAILED, first, last, [], note="the replay ran on a host that differs in numerics "
                                "(--force): reruns on one host cannot pin a difference between hosts")
        else:
            try:
                pinned = pin_step(_Pair(engine, store, original, record, True, progress), d)
            except EnvkitError as exc:  # the replay's verdict stands without the pin
                pinned = PinnedStep(FAILED, first, last, [], note=exc.message)
        verdict.divergence = pinned_divergence(div, pinned)

    return hook
