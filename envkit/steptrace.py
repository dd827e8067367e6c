"""Step traces compared: the first recorded optimizer step at which two runs' parameters differ.

:func:`compare_traces` reads the step traces of two runs (written by :mod:`envkit.injob.trace`) and finds the first
recorded step at which a parameter's digest differs; :func:`first_divergence` is the short form and
:func:`first_divergence_in_runs` the dict ``envkit replay`` puts in its DIVERGED verdict.

Steps count optimizer steps: step 0 is the parameters before the first ``optimizer.step()`` (the initialisation),
step k the parameters right after the k-th. A trace pair is compared on the steps both recorded, so traces taken at
different intervals still compare (at the steps they share); the divergence is then bracketed by the last common step
that was equal: it arose in one of the steps after that one, up to and including the step where it shows.
:func:`judge_pin` reads the traces of two reruns that recorded every step of such a bracket (:mod:`envkit.pin` makes
them) and names the exact step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import TraceError
from envkit.jsonlines import read_json_lines
from envkit.store.layout import meta_files

TRACE_GLOB = "trace*.jsonl"
MAIN_TRACE = "trace.jsonl"
TRACE_FORMAT = 1


@dataclass(frozen=True)
class Divergence:
    """The first recorded step at which two traces differ.

    ``step`` 0 is the parameters before the first update (the initialisation); ``final`` means the records of every
    step agreed, that of the last step included, and only the digests taken when training ended differ (the
    parameters were changed after the last optimizer step). A final record whose step was not otherwise recorded is
    the record of that step (``final`` false). ``last_equal`` is the latest common recorded step before it whose digests were all equal: the
    divergence happened after it and at or before ``step``.
    """

    trace: str  # the trace file (one per process that stepped an optimizer)
    optimizer: int
    step: int
    final: bool
    last_equal: int | None
    params: list[str]  # digests differ
    grads: list[str] = field(default_factory=list)  # gradient digests differ (when both traces have them)
    only_a: list[str] = field(default_factory=list)  # parameters in the first trace only
    only_b: list[str] = field(default_factory=list)

    @property
    def at_initialisation(self) -> bool:
        """The parameters already differ before the first optimizer step."""
        return self.step == 0 and not self.final and bool(self.params or self.only_a or self.only_b)

    @property
    def pinnable(self) -> bool:
        """Steps between the last equal recorded step and this one were not recorded: rerunning with each of them
        traced can name the exact step."""
        return not self.final and self.step > (self.last_equal or 0) + 1

    @property
    def bracket(self) -> tuple[int, int]:
        """``(last equal recorded step, first differing one)``: the runs part in a step after the first, up to and
        including the second."""
        return (self.last_equal or 0, self.step)

    @property
    def op_step(self) -> int | None:
        """The step whose op trace holds the op where the runs part: this step when it is exact (step 1 when only the
        first gradients differ); None when the step is not exact or no training op made the difference."""
        if self.final or self.at_initialisation or self.pinnable:
            return None
        return max(self.step, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at_initialisation": self.at_initialisation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Divergence:
        """Back from :meth:`to_dict` (or replay's verdict, which adds keys of its own)."""
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


@dataclass(frozen=True)
class TraceComparison:
    """Two runs' traces side by side."""

    divergence: Divergence | None
    compared: int  # records compared (common steps, all files and optimizers)
    files: list[str]  # trace files found in both runs
    only_a: list[str] = field(default_factory=list)  # trace files of one run only
    only_b: list[str] = field(default_factory=list)
    final_equal: bool | None = None  # every final record equal; None when not both traces have them
    last_steps: tuple[int | None, int | None] = (None, None)  # steps of optimizer 0 of the main trace
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["divergence"] = self.divergence.to_dict() if self.divergence else None
        data["last_steps"] = list(self.last_steps)
        return data


@dataclass
class _Trace:
    name: str
    header: dict[str, Any]
    records: dict[tuple[int, int, bool], dict[str, Any]]  # (optimizer, step, final) -> {"params", "grads"?}
    order: dict[int, list[str]]  # optimizer -> parameter names in the optimizer's order
    truncated: bool = False


def trace_files(path: Path) -> dict[str, Path]:
    """The trace files of a run: ``path`` is a trace file, a run's ``meta`` folder or the run folder itself."""
    return meta_files(path, TRACE_GLOB)


def read_trace(path: Path) -> _Trace:
    """Parse one trace file; a cut last line (a killed job) is dropped.

    Raises:
        TraceError: unreadable, not JSON lines, no header, or an unknown format version.
    """
    lines, cut = read_json_lines(path, "step trace",
                                 "the file was edited or damaged; rerun with --trace to make a new one")
    trace = _Trace(Path(path).name, {}, {}, {})
    for number, obj in lines:
        if not isinstance(obj, dict):
            raise TraceError(f"step trace {path}: line {number} is not a JSON object")
        try:
            _add_line(trace, obj)
        except (KeyError, IndexError, TypeError, ValueError):
            raise TraceError(f"step trace {path}: line {number} is not a header, optimizer or step record") from None
        if "envkit_trace" in obj and obj["envkit_trace"] != TRACE_FORMAT:
            raise TraceError(f"step trace {path} has format {obj['envkit_trace']!r}; this envkit reads "
                             f"{TRACE_FORMAT}", hint="use the envkit version that wrote it")
    trace.truncated = cut[0]
    if not trace.header:
        raise TraceError(f"step trace {path} has no header line", hint="is it a file written by `envkit run --trace`?")
    return trace


def _add_line(trace: _Trace, obj: dict[str, Any]) -> None:
    """One parsed line into the trace; KeyError, TypeError or ValueError when it is none of the three kinds."""
    if "envkit_trace" in obj:
        trace.header = obj
    elif "optimizer" in obj:
        trace.order[int(obj["optimizer"])] = [str(p[0]) for p in obj["params"]]
    elif isinstance(obj.get("params"), dict) and isinstance(obj.get("grads", {}), (dict, type(None))):
        key = (int(obj.get("opt", 0)), int(obj["step"]), bool(obj.get("final", False)))
        trace.records[key] = {"params": obj["params"], "grads": obj.get("grads")}
    else:
        raise ValueError("unknown line")


def first_divergence(trace_a: Path, trace_b: Path) -> Divergence | None:
    """The first step at which two runs' parameters differ, or None when every common recorded step agrees.

    Each argument is a trace file, a run's ``meta`` folder or a run folder; the trace files of two folders are
    paired by name (``trace.jsonl`` with ``trace.jsonl``, ``trace.rank1.jsonl`` with ``trace.rank1.jsonl``).

    Raises:
        TraceError: a trace file is malformed, or the two were made with different digests.
    """
    return compare_traces(trace_a, trace_b).divergence


def first_divergence_in_runs(run_a: Path, run_b: Path) -> dict[str, Any] | None:
    """For replay's verdict: where two run folders' traces part, as a JSON-ready dict; None without traces.

    The dict is :meth:`Divergence.to_dict` plus ``message`` (:func:`describe_divergence`) when the traces part;
    when they agree, ``step`` is None and ``message`` says so (and whether the final parameters are equal).

    Raises:
        TraceError: a trace file is malformed, or the two were made with different digests.
    """
    if not trace_files(run_a) or not trace_files(run_b):
        return None
    t = compare_traces(run_a, run_b)
    if t.divergence is not None:
        return {**t.divergence.to_dict(), "message": "training diverged " + describe_divergence(t.divergence)}
    message = f"every recorded step agrees ({t.compared} compared)"
    if t.final_equal:
        message += "; the parameters are equal at the end, so a differing file differs in how it was written"
    return {"step": None, "params": [], "message": message, "compared": t.compared, "final_equal": t.final_equal}


def compare_traces(a: Path, b: Path) -> TraceComparison:
    """Compare the traces of two runs (see :func:`first_divergence` for the arguments).

    Raises:
        TraceError: a trace file is malformed, or the two were made with different digests.
    """
    files_a, files_b = trace_files(a), trace_files(b)
    if Path(a).is_file() and Path(b).is_file():  # two files named explicitly: compare them whatever their names
        files_b = {name: files_b[other] for name, other in zip(files_a, files_b, strict=True)}
    common = sorted(set(files_a) & set(files_b), key=lambda n: (n != MAIN_TRACE, n))
    divergences: list[Divergence] = []
    compared, finals, notes = 0, [], []
    last_steps: tuple[int | None, int | None] = (None, None)
    for name in common:
        ta, tb = read_trace(files_a[name]), read_trace(files_b[name])
        if ta.header.get("digest") != tb.header.get("digest"):
            raise TraceError(f"the traces {name} were made with different digests ({ta.header.get('digest')} and "
                             f"{tb.header.get('digest')})", hint="trace both runs with the same envkit version")
        div, n, final_equal, pair_notes = _compare_pair(ta, tb)
        compared += n
        notes += pair_notes
        if div is not None:
            divergences.append(div)
        if final_equal is not None:
            finals.append(final_equal)
        if name == common[0]:
            last_steps = (_last_step(ta), _last_step(tb))
    divergence = min(divergences, key=lambda d: (d.step, d.final), default=None)
    return TraceComparison(
        divergence=divergence, compared=compared, files=common, only_a=sorted(set(files_a) - set(files_b)),
        only_b=sorted(set(files_b) - set(files_a)), final_equal=all(finals) if finals else None,
        last_steps=last_steps, notes=notes,
    )


def _last_step(trace: _Trace, optimizer: int = 0) -> int | None:
    steps = [step for opt, step, _final in trace.records if opt == optimizer]
    return max(steps, default=None)


def _compare_pair(ta: _Trace, tb: _Trace) -> tuple[Divergence | None, int, bool | None, list[str]]:
    """First divergence, records compared, final parameters equal (None: not known), notes; one pair of files."""
    notes = [f"{t.name} of run {side} ends with a cut line (the job was killed while writing)"
             for side, t in (("A", ta), ("B", tb)) if t.truncated]
    opts_a = {opt for opt, _s, _f in ta.records}
    opts_b = {opt for opt, _s, _f in tb.records}
    for opt in sorted(opts_a ^ opts_b):
        notes.append(f"{ta.name}: optimizer {opt} stepped in run {'A' if opt in opts_a else 'B'} only")
    found: list[Divergence] = []
    compared = 0
    finals: list[bool | None] = []
    for opt in sorted(opts_a & opts_b):
        order = ta.order.get(opt) or tb.order.get(opt) or []
        last_equal = None
        for key in sorted(k for k in set(ta.records) & set(tb.records) if k[0] == opt):
            ra, rb = ta.records[key], tb.records[key]
            compared += 1
            params, only_a, only_b = _differ(ra["params"], rb["params"], order)
            grads = (_differ(ra["grads"], rb["grads"], order)[0]
                     if isinstance(ra["grads"], dict) and isinstance(rb["grads"], dict) else [])
            if params or grads or only_a or only_b:
                # A final record tells of a change after training only when the same step's record was equal; after
                # sparse records (auto) it is the first record of the steps since the last one, like any other.
                final = key[2] and last_equal == key[1]
                found.append(Divergence(ta.name, opt, key[1], final, last_equal, params, grads, only_a, only_b))
                break
            last_equal = key[1]
        fa, fb = _final_params(ta, opt), _final_params(tb, opt)
        finals.append(None if fa is None or fb is None else fa == fb)
        sa, sb = _last_step(ta, opt), _last_step(tb, opt)
        if sa != sb:
            notes.append(f"{ta.name}: optimizer {opt} made {sa} steps in run A and {sb} in run B")
    first = min(found, key=lambda d: (d.step, d.final, d.optimizer), default=None)
    final_equal = None if not finals or None in finals else all(finals)
    return first, compared, final_equal, notes


def _final_params(trace: _Trace, optimizer: int) -> dict[str, Any] | None:
    finals = [record["params"] for (opt, _step, final), record in trace.records.items() if opt == optimizer and final]
    return finals[-1] if finals else None


def _differ(a: dict[str, Any], b: dict[str, Any], order: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Names whose digests differ, names in ``a`` only, names in ``b`` only; in the optimizer's order."""
    rank = {name: i for i, name in enumerate(order)}

    def ordered(names: set[str]) -> list[str]:
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))

    both = set(a) & set(b)
    return (ordered({n for n in both if a[n] != b[n]}), ordered(set(a) - set(b)), ordered(set(b) - set(a)))


def describe_divergence(d: Divergence, limit: int = 8) -> str:
    """One line: where the runs part and which parameters differ there (for replay's DIVERGED verdict)."""
    names = d.params or d.only_a or d.only_b or d.grads
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    where = "" if d.trace == MAIN_TRACE else f" in {d.trace}"
    opt = f" of optimizer {d.optimizer}" if d.optimizer else ""
    if d.at_initialisation:
        head = f"at initialisation{where}: the parameters differ before the first optimizer step"
    elif d.final:
        head = (f"after the last optimizer step{where} (step {d.step}{opt}): every recorded step agrees, but the "
                "parameters were changed after training")
    elif d.step == 0:
        head = f"in the first backward pass{where}: equal initial parameters, different first gradients"
    else:
        gap = d.last_equal is not None and d.last_equal < d.step - 1  # steps between them were not recorded
        bracket = f", last equal recorded step {d.last_equal}" if gap else ""
        head = f"at step {d.step}{opt}{where}{bracket}"
    what = "parameters" if d.params else ("gradients" if not (d.only_a or d.only_b) else "parameter sets")
    return f"{head} ({what}: {shown})" if shown else head


# --- pinning ---------------------------------------------------------------------------------------------------------
PINNED = "pinned"  # the reruns part at one step inside the bracket, every step before it equal
EARLIER = "earlier"  # the reruns part at or before the bracket's first step: where it happens moves
LATER = "later"  # the reruns agree through the bracket's last step and part after it
AGREE = "agree"  # the reruns agree at every recorded step: the difference did not happen again
FAILED = "failed"  # a rerun did not succeed, or left no trace


@dataclass(frozen=True)
class PinnedStep:
    """What two reruns that traced every step of a bracket found (:func:`judge_pin`)."""

    outcome: str  # PINNED, EARLIER, LATER, AGREE or FAILED
    first: int  # the bracket: the last equal recorded step ...
    last: int  # ... and the first differing one
    runs: list[str]  # the rerun of run A's job and of run B's job
    step: int | None = None  # PINNED: the exact step; EARLIER: where the reruns part
    divergence: Divergence | None = None  # the reruns' first divergence
    note: str | None = None  # FAILED: why

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["divergence"] = self.divergence.to_dict() if self.divergence else None
        return data


def judge_pin(run_a: Path, run_b: Path, first: int, last: int, runs: list[str]) -> PinnedStep:
    """Read the step traces of two reruns that recorded every step from ``first`` to ``last`` and say where they part.

    Raises:
        TraceError: a trace file is malformed.
    """
    if not trace_files(run_a) or not trace_files(run_b):
        return PinnedStep(FAILED, first, last, runs, note="a rerun left no step trace")
    d = compare_traces(run_a, run_b).divergence
    if d is None:
        return PinnedStep(AGREE, first, last, runs)
    if d.final or d.step > last:
        return PinnedStep(LATER, first, last, runs, divergence=d)
    if d.step <= first:
        return PinnedStep(EARLIER, first, last, runs, d.step, d)
    if d.pinnable:  # a step inside the window went unrecorded (a trace that stopped writing)
        return PinnedStep(FAILED, first, last, runs, divergence=d,
                          note=f"the reruns recorded no step between {d.last_equal} and {d.step}")
    return PinnedStep(PINNED, first, last, runs, d.step, d)


def describe_pin(p: PinnedStep) -> str:
    """One line on what the reruns found, for ``envkit diff`` and replay's verdict."""
    reruns = f"reruns of both jobs that traced every step from {p.first} to {p.last}"
    runs = f" (runs {', '.join(p.runs)})" if p.runs else ""
    if p.outcome == PINNED:
        return f"recorded steps {p.first} and {p.last} bracketed it; {reruns} part at step {p.step}{runs}"
    if p.outcome == EARLIER:
        return (f"{reruns} part at step {p.step}, before the bracket: where the runs part moves from run to "
                f"run{runs}")
    if p.outcome == LATER:
        return f"{reruns} agree through step {p.last}: they part later{runs}"
    if p.outcome == AGREE:
        return (f"{reruns} agree at every step: the difference did not happen again on this host (did it come from "
                f"what differs between the runs' hosts?){runs}")
    return f"not pinned: {p.note}"


def pinned_divergence(div: dict[str, Any], pinned: PinnedStep) -> dict[str, Any]:
    """Replay's divergence (:func:`first_divergence_in_runs`) with what the reruns found: the exact step in place of
    the recorded one (which moves to ``recorded``), the pin under ``pin``, and ``pin_message`` saying how it was
    found."""
    out = {**div, "pin": pinned.to_dict(), "pin_message": describe_pin(pinned)}
    if pinned.outcome == PINNED and pinned.divergence is not None:
        exact = pinned.divergence
        out["recorded"] = {k: div.get(k) for k in ("step", "last_equal", "params", "grads")}
        out.update(exact.to_dict())
        out["message"] = f"training diverged {describe_divergence(exact)}"
    return out
