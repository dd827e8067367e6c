"""Where two runs part: the first optimizer step and parameters whose digests differ, and what could explain it.

:func:`compare_traces` reads the step traces of two runs (written by :mod:`envkit.run.trace`) and finds the first
recorded step at which a parameter's digest differs; :func:`first_divergence` is the short form ``envkit replay``
uses for its DIVERGED verdict. :func:`diff_runs` adds the run records: which outputs differ, whether the parameters
were equal at the end (then the difference is in how a file was written, not in training), and every difference
between the records that could explain it: seed, determinism level, threads, CPU profile, image, lock, code, inputs,
command, environment and the hardware/software fingerprint, those that change numerics first.
:func:`render_diff` turns the result into text; nothing here prints.

A trace pair is compared on the steps both recorded, so traces taken at different intervals still compare (at the
steps they share); the divergence is then bracketed by the last common step that was equal.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import TraceError
from envkit.fingerprint import compare_fingerprints
from envkit.manifest import ManifestEntry, compare
from envkit.settings import (
    ENV_CPU_PROFILE,
    ENV_DETERMINISM,
    ENV_OUTPUT_DIR,
    ENV_REPORT_DIR,
    ENV_RUN_ID,
    ENV_SEED,
    ENV_THREADS,
    ENV_TRACE,
    ENV_TRACE_FILE,
    ENV_TRACE_GRADS,
)
from envkit.store.layout import META_DIR
from envkit.store.record import REDACTED, RunRecord

TRACE_GLOB = "trace*.jsonl"
MAIN_TRACE = "trace.jsonl"
TRACE_FORMAT = 1

# Verdicts of diff_runs.
IDENTICAL = "identical"  # outputs equal, no trace divergence
DIVERGED = "diverged"  # the traces part at some step
WRITTEN_DIFFERENTLY = "written-differently"  # parameters equal at the end, an output differs
OUTPUTS_DIFFER = "outputs-differ"  # outputs differ; no trace to say where

KINDS = ("seed", "determinism", "threads", "cpu_profile", "image", "lock", "code", "inputs", "command", "environment",
         "fingerprint", "status")
# Environment variables that mirror a record field (compared there) or always differ.
_ENV_SKIP = {ENV_SEED, ENV_DETERMINISM, ENV_THREADS, ENV_CPU_PROFILE, ENV_RUN_ID}
_ENV_HARMLESS = {
    ENV_TRACE: "the step trace reads the parameters, it does not change them",
    ENV_TRACE_FILE: "the step trace reads the parameters, it does not change them",
    ENV_TRACE_GRADS: "the step trace reads the gradients, it does not change them",
    ENV_REPORT_DIR: "where envkit writes its reports",
    ENV_OUTPUT_DIR: "where the job writes outputs",
}


# --- traces ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Divergence:
    """The first recorded step at which two traces differ.

    ``step`` 0 is the parameters before the first update (the initialisation); ``final`` means the records of every
    step agreed and only the digests taken when training ended differ (the parameters were changed after the last
    optimizer step). ``last_equal`` is the latest common recorded step before it whose digests were all equal: the
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

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "at_initialisation": self.at_initialisation}


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
    path = Path(path)
    if path.is_file():
        return {path.name: path}
    folder = path / META_DIR if (path / META_DIR).is_dir() else path
    return {p.name: p for p in sorted(folder.glob(TRACE_GLOB)) if p.is_file()}


def read_trace(path: Path) -> _Trace:
    """Parse one trace file; a cut last line (a killed job) is dropped.

    Raises:
        TraceError: unreadable, not JSON lines, no header, or an unknown format version.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read the step trace {path} ({getattr(exc, 'strerror', None) or exc})") from exc
    lines = text.split("\n")
    trace = _Trace(Path(path).name, {}, {}, {})
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            if number == len(lines):  # no newline after it: the job was killed while writing
                trace.truncated = True
                continue
            raise TraceError(f"step trace {path}: line {number} is not JSON",
                             hint="the file was edited or damaged; rerun with --trace to make a new one") from None
        if not isinstance(obj, dict):
            raise TraceError(f"step trace {path}: line {number} is not a JSON object")
        try:
            _add_line(trace, obj)
        except (KeyError, IndexError, TypeError, ValueError):
            raise TraceError(f"step trace {path}: line {number} is not a header, optimizer or step record") from None
        if "envkit_trace" in obj and obj["envkit_trace"] != TRACE_FORMAT:
            raise TraceError(f"step trace {path} has format {obj['envkit_trace']!r}; this envkit reads "
                             f"{TRACE_FORMAT}", hint="use the envkit version that wrote it")
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
                found.append(Divergence(ta.name, opt, key[1], key[2], last_equal, params, grads, only_a, only_b))
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


# --- runs ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """One difference between two run records that could explain a divergence."""

    kind: str  # one of KINDS
    name: str  # the field, variable, file or fingerprint path
    a: Any
    b: Any
    changes_numerics: bool
    why: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FileChange:
    """An output that differs: its sha256 in each run (None where the run did not write it)."""

    path: str
    a: str | None
    b: str | None


@dataclass(frozen=True)
class RunDiff:
    """What :func:`diff_runs` found."""

    run_a: str
    run_b: str
    verdict: str  # IDENTICAL, DIVERGED, WRITTEN_DIFFERENTLY or OUTPUTS_DIFFER
    trace: TraceComparison | None  # None when a run has no trace
    trace_note: str | None  # why there is no trace comparison
    outputs: list[FileChange]  # the outputs that differ
    outputs_compared: int
    differences: list[Difference]  # those that change numerics first
    relation: str | None = None  # "B replays A" / "A replays B"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trace"] = self.trace.to_dict() if self.trace else None
        return data


def diff_runs(a: RunRecord, b: RunRecord, traces_a: Path | None = None, traces_b: Path | None = None) -> RunDiff:
    """Compare two runs: their traces (where they part), their outputs, and their records (what could explain it).

    Args:
        a, b: the run records.
        traces_a, traces_b: each run's trace file, ``meta`` folder or run folder; None when there is none.

    Raises:
        TraceError: a trace file is malformed, or the two were made with different digests.
    """
    found_a = trace_files(traces_a) if traces_a is not None else {}
    found_b = trace_files(traces_b) if traces_b is not None else {}
    trace, note = None, None
    if found_a and found_b:
        trace = compare_traces(traces_a, traces_b)  # type: ignore[arg-type]
        if not trace.files:
            note = "the runs' traces come from different processes; nothing to compare"
    else:
        missing = [side for side, found in (("A", found_a), ("B", found_b)) if not found]
        note = f"no step trace in run {' and '.join(missing)} (run with --trace N to record one)"
    outputs = _file_changes(a.outputs, b.outputs)
    if trace is not None and trace.divergence is not None:
        verdict = DIVERGED
    elif not outputs:
        verdict = IDENTICAL
    elif trace is not None and trace.final_equal:
        verdict = WRITTEN_DIFFERENTLY
    else:
        verdict = OUTPUTS_DIFFER
    relation = ("B replays A" if b.replay_of == a.run_id else "A replays B" if a.replay_of == b.run_id else None)
    return RunDiff(run_a=a.run_id, run_b=b.run_id, verdict=verdict, trace=trace, trace_note=note, outputs=outputs,
                   outputs_compared=len({e.path for e in a.outputs} | {e.path for e in b.outputs}),
                   differences=record_differences(a, b), relation=relation)


def record_differences(a: RunRecord, b: RunRecord) -> list[Difference]:
    """Every difference between two records that could explain different bits, those that change numerics first."""
    out: list[Difference] = []

    def add(kind: str, name: str, va: Any, vb: Any, numerics: bool, why: str) -> None:
        if va != vb:
            out.append(Difference(kind, name, va, vb, numerics, why))

    add("seed", "seed", a.seed, b.seed, True, "every generator starts from the seed")
    add("determinism", "determinism", a.determinism, b.determinism, True,
        "below strict, torch may pick nondeterministic kernels")
    add("threads", "threads", a.threads, b.threads, True,
        "reductions split over other thread counts sum in another order")
    add("cpu_profile", "cpu_profile", a.cpu_profile, b.cpu_profile, True,
        "native uses the host's best instruction sets, portable a fixed baseline")
    add("image", "image id", a.image.id, b.image.id, True, "another image: other packages or another build of them")
    if a.image.id == b.image.id:
        add("image", "image digest", a.image.digest, b.image.digest, False, "the same image under another name")
    la, lb = (a.lock.sha256 if a.lock else None), (b.lock.sha256 if b.lock else None)
    add("lock", "lockfile sha256", la, lb, True, "other pinned packages")
    if a.code.sha256 != b.code.sha256:
        changes = _file_changes(a.code.files, b.code.files)
        for c in changes:
            add("code", c.path, c.a, c.b, True, "the job's code or a file it reads")
        if not changes:
            add("code", "snapshot sha256", a.code.sha256, b.code.sha256, True, "the job's code")
    add("code", "git commit", a.code.git_commit, b.code.git_commit, False, "the commit alone; files are compared above")
    for c in _file_changes(a.inputs, b.inputs):
        add("inputs", c.path, c.a, c.b, True, "the job reads it")
    add("command", "script", a.script, b.script, True, "another script")
    add("command", "args", a.args, b.args, True, "the script's arguments")
    if a.script is None or b.script is None:  # `envkit run -- COMMAND`: the command line is the job's entry point
        add("command", "command", a.job_argv, b.job_argv, True, "another command or its arguments")
    if a.world_size is not None and b.world_size is not None:  # unknown in records made before it was kept
        add("command", "world size", a.world_size, b.world_size, True,
            "another number of ranks splits the data and reduces the gradients differently")
    for name in sorted((set(a.environment) | set(b.environment)) - _ENV_SKIP):
        va, vb = a.environment.get(name), b.environment.get(name)
        if va == REDACTED and vb == REDACTED:
            continue  # secrets are not recorded: cannot tell
        add("environment", name, va, vb, *_env_class(name))
    profile = "native" if "native" in (a.cpu_profile, b.cpu_profile) else "portable"
    for d in compare_fingerprints(dataclasses.asdict(a.fingerprint), dataclasses.asdict(b.fingerprint), profile):
        add("fingerprint", d.path, d.recorded, d.current, d.changes_numerics, d.why)
    add("command", "trace interval", a.trace, b.trace, False, _ENV_HARMLESS[ENV_TRACE])
    add("command", "memory limit", a.memory, b.memory, False, "a limit stops a job, it does not change its numbers")
    add("status", "status", a.status, b.status, False, "a run that stopped early has fewer steps and outputs")
    add("status", "exit code", a.exit_code, b.exit_code, False, "how the job ended")
    return sorted(out, key=lambda d: (not d.changes_numerics, KINDS.index(d.kind)))


def _env_class(name: str) -> tuple[bool, str]:
    if name in _ENV_HARMLESS:
        return False, _ENV_HARMLESS[name]
    if name == "PYTHONHASHSEED":
        return True, "string hashes, so the iteration order of sets"
    if name.endswith("_NUM_THREADS"):
        return True, "reductions split over other thread counts sum in another order"
    return True, "the job or a library may read it"


def _file_changes(a: list[ManifestEntry], b: list[ManifestEntry]) -> list[FileChange]:
    return [FileChange(c.path, c.sha_a, c.sha_b) for c in compare(a, b) if c.sha_a != c.sha_b]


# --- rendering -------------------------------------------------------------------------------------------------------
def render_diff(d: RunDiff, show_all: bool = False, limit: int = 12) -> str:
    """The diff as text: the verdict, where training parted, the outputs, then what differs between the runs.

    Args:
        show_all: list differences that do not change numerics too (otherwise they are counted).
        limit: list at most this many outputs and differences per group.
    """
    lines = [f"run A {d.run_a}", f"run B {d.run_b}" + (f"  ({d.relation})" if d.relation else ""), ""]
    t = d.trace
    if d.verdict == DIVERGED and t is not None and t.divergence is not None:
        lines.append(f"Training diverged {describe_divergence(t.divergence)}.")
    elif d.verdict == WRITTEN_DIFFERENTLY:
        lines.append("The parameters are equal at the end of training, but outputs differ: the difference is in how "
                     "the files were written (a timestamp, an ordering, a random name), not in training.")
    elif d.verdict == IDENTICAL:
        lines.append("Identical: every output matches" + (" and every recorded step agrees." if t else "."))
    else:
        lines.append("Outputs differ.")
    if t is not None:
        equal = (f"{t.compared} recorded step{'s' if t.compared != 1 else ''} compared"
                 + (", final parameters equal" if t.final_equal else ""))
        lines.append(f"  trace: {equal}")
        lines += [f"  note: {n}" for n in t.notes]
        lines += [f"  note: trace {n} in run A only" for n in t.only_a]
        lines += [f"  note: trace {n} in run B only" for n in t.only_b]
    if d.trace_note:
        lines.append(f"  trace: {d.trace_note}")
    if d.outputs:
        lines.append(f"  outputs: {len(d.outputs)} of {d.outputs_compared} differ")
        for c in d.outputs[:limit]:
            state = "only in A" if c.b is None else "only in B" if c.a is None else f"{c.a[:12]} -> {c.b[:12]}"
            lines.append(f"    {c.path}  {state}")
        if len(d.outputs) > limit:
            lines.append(f"    ... {len(d.outputs) - limit} more (--json lists all)")
    elif d.outputs_compared:
        lines.append(f"  outputs: all {d.outputs_compared} equal")
    numeric = [x for x in d.differences if x.changes_numerics]
    other = [x for x in d.differences if not x.changes_numerics]
    lines.append("")
    if numeric:
        lines.append("What differs and can change the numbers:")
        lines += _difference_lines(numeric, limit)
    else:
        lines.append("Nothing that changes the numbers differs between the records (seed, determinism, threads, CPU "
                     "profile, image, lock, code, inputs, command, environment, host).")
    if other and show_all:
        lines += ["", "Other differences (they do not change numerics):"] + _difference_lines(other, limit)
    elif other:
        lines.append(f"({len(other)} other differences do not change numerics; --all lists them)")
    return "\n".join(lines) + "\n"


def _difference_lines(diffs: list[Difference], limit: int) -> list[str]:
    lines: list[str] = []
    for kind in KINDS:
        group = [x for x in diffs if x.kind == kind]
        for x in group[:limit]:
            lines.append(f"  {kind:<12} {x.name}: {_short(x.a)} -> {_short(x.b)}  ({x.why})")
        if len(group) > limit:
            lines.append(f"  {kind:<12} ... {len(group) - limit} more (--json lists all)")
    return lines


def _short(value: Any, width: int = 40) -> str:
    if value is None:
        return "-"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[:width - 3] + "..."
