"""Where two runs part: the first optimizer step and parameters whose digests differ, and what could explain it.

The step traces are compared by :mod:`envkit.steptrace` (the first recorded step at which a parameter's digest
differs; its names are re-exported here) and the op traces by :mod:`envkit.optdiff`. :func:`diff_runs` adds the run
records: which outputs differ, whether the parameters were equal at the end (then the difference is in how a file was
written, not in training), and every difference between the records that could explain it: seed, determinism level,
threads, CPU profile, image, lock, code, inputs, command, environment and the hardware/software fingerprint, those
that change numerics first. It reads what is recorded and reruns nothing: :mod:`envkit.pin` reruns jobs to pin the
exact step and the first op, and hands what it found in (``pinned``, ``ops``). :func:`render_diff` turns the result
into text; nothing here prints.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    ENV_TRACE_OPS,
    ENV_TRACE_OPS_FILE,
    ENV_TRACE_OPS_SAVE,
    ENV_TRACE_STEPS,
)
from envkit.optdiff import OpFinding, render_op_finding
from envkit.steptrace import (  # noqa: F401 - re-exported: diff is where users look for them
    MAIN_TRACE,
    PINNED,
    TRACE_GLOB,
    Divergence,
    PinnedStep,
    TraceComparison,
    compare_traces,
    describe_divergence,
    describe_pin,
    first_divergence,
    first_divergence_in_runs,
    read_trace,
    trace_files,
)
from envkit.store.record import REDACTED, RunRecord

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
    ENV_TRACE_STEPS: "the step trace reads the parameters, it does not change them",
    ENV_TRACE_OPS: "the op trace reads each op's outputs, it does not change them",
    ENV_TRACE_OPS_FILE: "the op trace reads each op's outputs, it does not change them",
    ENV_TRACE_OPS_SAVE: "the op trace copies an op's inputs and outputs, it does not change them",
    ENV_REPORT_DIR: "where envkit writes its reports",
    ENV_OUTPUT_DIR: "where the job writes outputs",
}


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
    pinned: PinnedStep | None = None  # what reruns of both jobs that traced every step of the bracket found
    ops: OpFinding | None = None  # the first op where the runs part in the divergent step
    notes: list[str] = field(default_factory=list)  # about the pin and the op traces
    hints: list[str] = field(default_factory=list)  # reruns that would find more

    @property
    def divergence(self) -> Divergence | None:
        """Where training parted: the exact step the reruns pinned, else the first differing recorded step."""
        if self.pinned is not None and self.pinned.outcome == PINNED and self.pinned.divergence is not None:
            return self.pinned.divergence
        return self.trace.divergence if self.trace is not None else None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trace"] = self.trace.to_dict() if self.trace else None
        data["pinned"] = self.pinned.to_dict() if self.pinned else None
        data["ops"] = self.ops.to_dict() if self.ops else None
        data["divergence"] = self.divergence.to_dict() if self.divergence else None
        return data


def diff_runs(a: RunRecord, b: RunRecord, traces_a: Path | None = None, traces_b: Path | None = None,
              pinned: PinnedStep | None = None, ops: OpFinding | None = None, notes: list[str] | None = None,
              hints: list[str] | None = None) -> RunDiff:
    """Compare two runs: their traces (where they part), their outputs, and their records (what could explain it).

    Args:
        a, b: the run records.
        traces_a, traces_b: each run's trace file, ``meta`` folder or run folder; None when there is none.
        pinned, ops, notes, hints: what :func:`envkit.pin.find` found (the exact step, the first op) and says.

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
                   differences=record_differences(a, b), relation=relation, pinned=pinned, ops=ops,
                   notes=list(notes or []), hints=list(hints or []))


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
    add("command", "trace", a.trace, b.trace, False, "traces read the numbers, they do not change them")
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
    if d.verdict == DIVERGED and d.divergence is not None:
        lines.append(f"Training diverged {describe_divergence(d.divergence)}.")
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
    if d.pinned is not None:
        lines.append(f"  pin: {describe_pin(d.pinned)}")
    if d.ops is not None:
        first, *rest = render_op_finding(d.ops)
        lines += [f"  {first}"] + [f"  {line}" for line in rest]
    lines += [f"  note: {n}" for n in d.notes]
    lines += [f"  hint: {h}" for h in d.hints]
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
