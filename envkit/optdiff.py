"""Where two runs part, op by op: the first ATen op whose output differs, or where the op streams themselves part.

:func:`compare_optraces` reads the op traces of two runs (written by :mod:`envkit.injob.optrace` for one step) and
walks them side by side. While both runs execute the same op with outputs of the same dtype and shape at the same
index, the first op whose output digest differs is the answer. If the runs execute different ops before any output
differs (a branch taken on one side only, an extra op, one trace cut short), that point is reported instead: there the
op streams part. :func:`align` then lines the rest up again, and the first differing output after the streams rejoin
is reported too.

A digest only says that two outputs differ. For the count of differing elements and the largest absolute
difference, the tracer runs the step again and saves that op's inputs and outputs (``save=[index]``, one
``optrace.op{index}.safetensors`` beside each trace). A first pass cannot know which op will differ, so this takes a
second pass. When both runs' folders hold the file, this module reads it with the standard library alone (the host
need not have torch). The inputs tell how the difference arose: if they are equal, the op itself computed
differently (another kernel, another CPU); if one differs, it came from outside the traced ops.

:func:`render_op_divergence` turns the result into lines of text; nothing here prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.errors import TraceError
from envkit.jsonlines import read_json_lines
from envkit.injob.optrace import FORMAT_VERSION, UNINITIALISED, saved_name
from envkit.opalign import align
from envkit.savedtensors import TensorDiff, saved_diffs
from envkit.store.layout import meta_files

OPTRACE_GLOB = "optrace*.jsonl"
MAIN_OPTRACE = "optrace.jsonl"
_NO_DIGEST = {"?", UNINITIALISED}


# --- reading ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One recorded op."""

    index: int
    op: str
    outputs: tuple[tuple[str, str | None, tuple[int, ...] | None] | None, ...]  # (digest, dtype, shape) per output
    module: str | None = None
    at: str | None = None  # file:line
    bwd: str | None = None  # the autograd node when it ran in the backward pass
    optim: str | None = None  # the optimizer type when it ran in optimizer.step()

    @property
    def key(self) -> tuple[Any, ...]:
        """What must match for two ops to be the same op: name, and each output's dtype and shape."""
        return (self.op, tuple(None if o is None else (o[1], o[2]) for o in self.outputs))


@dataclass
class OpTrace:
    """One op trace file."""

    name: str
    path: Path
    header: dict[str, Any]
    ops: list[Op]
    end: dict[str, Any] | None = None
    cut: bool = False  # the last line was cut (the job was killed while writing)


def optrace_files(path: Path) -> dict[str, Path]:
    """The op traces of a run: ``path`` is a trace file, a run's ``meta`` folder or the run folder itself."""
    return meta_files(path, OPTRACE_GLOB)


def read_optrace(path: Path) -> OpTrace:
    """Parse one op trace file; a cut last line (a killed job) is dropped.

    Raises:
        TraceError: unreadable, not JSON lines, no header, or an unknown format version.
    """
    path = Path(path)
    lines, cut = read_json_lines(path, "op trace", "the file was edited or damaged; trace the step again")
    trace = OpTrace(path.name, path, {}, [])
    for number, obj in lines:
        try:
            _add_line(trace, obj)
        except (KeyError, IndexError, TypeError, ValueError):
            raise TraceError(f"op trace {path}: line {number} is not a header, op or end record") from None
    trace.cut = cut[0]
    if not trace.header:
        raise TraceError(f"op trace {path} has no header line", hint="is it a file written by the op tracer?")
    if trace.header.get("envkit_optrace") != FORMAT_VERSION:
        raise TraceError(f"op trace {path} has format {trace.header.get('envkit_optrace')!r}; this envkit reads "
                         f"{FORMAT_VERSION}", hint="use the envkit version that wrote it")
    trace.ops.sort(key=lambda o: o.index)  # batches from the backward pass's device threads may come out of order
    return trace


def _add_line(trace: OpTrace, obj: Any) -> None:
    """One parsed line into the trace; KeyError, TypeError or ValueError when it is none of the three kinds."""
    if not isinstance(obj, dict):
        raise TypeError("not an object")
    if "envkit_optrace" in obj:
        trace.header = obj
    elif obj.get("end") is True:
        trace.end = obj
    else:
        outputs = tuple(None if o is None else (str(o[0]), None if o[1] is None else str(o[1]),
                                                None if o[2] is None else tuple(int(n) for n in o[2]))
                        for o in obj["out"])
        trace.ops.append(Op(int(obj["i"]), str(obj["op"]), outputs, _opt_str(obj, "module"), _opt_str(obj, "at"),
                            _opt_str(obj, "bwd"), _opt_str(obj, "optim")))


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return None if value is None else str(value)


# --- comparing -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpDivergence:
    """Where two op traces part.

    ``kind`` is ``"output"`` (the same op, at ``index_a`` in A and ``index_b`` in B, has an output whose digest
    differs) or ``"stream"`` (A runs ``op`` where B runs ``op_b``; ``op_b`` is None when B's trace ends there, and
    ``op`` is None when A's does). ``later`` counts the aligned ops after it whose outputs differ too. ``tensors``
    holds the saved inputs and outputs compared, when both runs saved this op.
    """

    trace: str
    step: int | None
    kind: str
    index_a: int
    index_b: int
    op: str | None
    module: str | None
    at: str | None
    bwd: str | None
    optim: str | None
    output: int | None = None  # the first output whose digest differs
    dtype: str | None = None
    shape: tuple[int, ...] | None = None
    op_b: str | None = None
    module_b: str | None = None
    at_b: str | None = None
    later: int = 0
    tensors: list[TensorDiff] = field(default_factory=list)
    numbers: list[tuple[str, str, str]] = field(default_factory=list)  # (argument, A, B) for numbers that differ

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OpComparison:
    """What :func:`compare_optraces` found: the first divergence of each trace pair, the earliest first."""

    divergences: list[OpDivergence]  # one per file pair that parts; the main trace's first
    after_rejoin: list[OpDivergence]  # for a stream parting: the first differing output once the streams rejoin
    compared: int  # aligned op pairs compared
    files: list[str]
    only_a: list[str]
    only_b: list[str]
    notes: list[str]

    @property
    def divergence(self) -> OpDivergence | None:
        return self.divergences[0] if self.divergences else None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "divergence": self.divergence.to_dict() if self.divergence else None}


@dataclass(frozen=True)
class OpFinding:
    """The first op where two runs part in one step, and where the op traces came from.

    ``runs`` are the reruns of both jobs that traced the step (empty: the runs' own op traces); ``saved`` is the
    second pass, reruns that saved the op's inputs and outputs (``saved_runs``), when it parted at the same op.
    """

    step: int
    comparison: OpComparison
    runs: list[str] = field(default_factory=list)
    saved: OpComparison | None = None
    saved_runs: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def divergence(self) -> OpDivergence | None:
        """The first op where the runs part, with its element counts when the second pass has them."""
        if self.saved is not None and self.saved.divergence is not None:
            return self.saved.divergence
        return self.comparison.divergence

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "comparison": self.comparison.to_dict(), "runs": self.runs,
                "saved": self.saved.to_dict() if self.saved else None, "saved_runs": self.saved_runs,
                "note": self.note, "divergence": self.divergence.to_dict() if self.divergence else None}


def compare_optraces(a: Path, b: Path) -> OpComparison:
    """Compare the op traces of two runs, file by file (paired by name, as the step traces are).

    Each argument is a trace file, a run's ``meta`` folder or a run folder. When both runs saved the tensors of the
    op where they part (a second pass with ``save``), the divergence carries their comparison.

    Raises:
        TraceError: a trace or saved tensor file is malformed, or the two traces are of different steps or digests.
    """
    files_a, files_b = optrace_files(a), optrace_files(b)
    if Path(a).is_file() and Path(b).is_file():  # two files named explicitly: compare them whatever their names
        files_b = {name: files_b[other] for name, other in zip(files_a, files_b, strict=True)}
    common = sorted(set(files_a) & set(files_b), key=lambda n: (n != MAIN_OPTRACE, n))
    divergences, rejoined, notes = [], [], []
    compared = 0
    for name in common:
        ta, tb = read_optrace(files_a[name]), read_optrace(files_b[name])
        for key, hint in (("step", "trace the same step of both runs"),
                          ("digest", "trace both runs with the same envkit version and digest")):
            if ta.header.get(key) != tb.header.get(key):
                raise TraceError(f"the op traces {name} differ in {key} ({ta.header.get(key)} and "
                                 f"{tb.header.get(key)}); they cannot be compared op by op", hint=hint)
        notes += _notes(ta, "A") + _notes(tb, "B")
        first, after, n = _compare_pair(ta, tb)
        compared += n
        if first is not None:
            divergences.append(first)
        if after is not None:
            rejoined.append(after)
    return OpComparison(divergences, rejoined, compared, common, sorted(set(files_a) - set(files_b)),
                        sorted(set(files_b) - set(files_a)), notes)


def first_op_divergence(a: Path, b: Path) -> OpDivergence | None:
    """The first op where two runs' op traces part, or None when every op agrees (see :func:`compare_optraces`)."""
    return compare_optraces(a, b).divergence


def _notes(trace: OpTrace, side: str) -> list[str]:
    notes = []
    if trace.cut:
        notes.append(f"{trace.name} of run {side} ends with a cut line (the job was killed while writing)")
    end = trace.end
    if end is None:
        notes.append(f"{trace.name} of run {side} has no end record (the job was killed during the traced step)")
    elif end.get("truncated"):
        notes.append(f"{trace.name} of run {side} stopped recording after {end.get('ops')} ops (the limit); "
                     "raise ENVKIT_TRACE_OPS_MAX to see further")
    elif not end.get("complete"):
        notes.append(f"{trace.name} of run {side} is incomplete: the job made {end.get('steps')} optimizer steps, "
                     f"the traced step is {trace.header.get('step')}")
    return notes


def _compare_pair(ta: OpTrace, tb: OpTrace) -> tuple[OpDivergence | None, OpDivergence | None, int]:
    """(first divergence, first differing output after a stream parting, pairs compared) of one pair of files."""
    a, b = ta.ops, tb.ops
    pairs, parted_at = align([o.key for o in a], [o.key for o in b])
    differing = [p for p in pairs if _differs(a[p[0]], b[p[1]]) is not None]
    first = differing[0] if differing else None
    if parted_at is None or (first is not None and first[0] < parted_at[0]):
        return (None if first is None else _divergence(ta, tb, first, len(differing) - 1)), None, len(pairs)
    # The op streams part before any output differs: what each side runs there.
    i, j = parted_at
    op_a = a[i] if i < len(a) else None
    op_b = b[j] if j < len(b) else None
    shown = op_a or op_b
    parted = OpDivergence(ta.name, ta.header.get("step"), "stream", i, j, op_a.op if op_a else None, shown.module,
                          shown.at, shown.bwd, shown.optim, op_b=op_b.op if op_b else None,
                          module_b=op_b.module if op_b else None, at_b=op_b.at if op_b else None,
                          later=len(differing))
    after = _divergence(ta, tb, first, len(differing) - 1) if first is not None else None
    return parted, after, len(pairs)


def _differs(x: Op, y: Op) -> int | None:
    """The first output whose digests differ, or None. Unreadable (``?``) and uninitialised outputs never count."""
    for k, (ox, oy) in enumerate(zip(x.outputs, y.outputs)):
        if ox is not None and oy is not None and ox[0] != oy[0] and not _NO_DIGEST.intersection((ox[0], oy[0])):
            return k
    return None


def _divergence(ta: OpTrace, tb: OpTrace, pair: tuple[int, int], later: int) -> OpDivergence:
    x, y = ta.ops[pair[0]], tb.ops[pair[1]]
    k = _differs(x, y)
    _digest, dtype, shape = x.outputs[k]  # type: ignore[index,misc]
    tensors: list[TensorDiff] = []
    numbers: list[tuple[str, str, str]] = []
    saved_a, saved_b = Path(saved_name(str(ta.path), x.index)), Path(saved_name(str(tb.path), y.index))
    if saved_a.is_file() and saved_b.is_file():
        tensors, numbers = saved_diffs(saved_a, saved_b)
    return OpDivergence(ta.name, ta.header.get("step"), "output", x.index, y.index, x.op, x.module, x.at, x.bwd,
                        x.optim, output=k, dtype=dtype, shape=shape, later=later, tensors=tensors, numbers=numbers)


# --- rendering -------------------------------------------------------------------------------------------------------
def describe_place(op: str | None, module: str | None, at: str | None, bwd: str | None, optim: str | None) -> str:
    """``aten::addmm in encoder.0 (train.py:57)``, with the backward node or optimizer where there is one."""
    text = op or "(end of trace)"
    if bwd:
        text += f" (backward, {bwd})"
    if module:
        text += f" in {module}"
    elif optim:
        text += f" in {optim}.step()"
    if at:
        text += f" ({Path(at).name})"
    return text


def render_op_divergence(d: OpDivergence, save_hint: str | None = None) -> list[str]:
    """Lines that say where two op traces part, e.g.
    ``first differing op: #1234 aten::addmm in encoder.layers.3.attn (train.py:57), float32[64, 128]: 37/8192
    elements differ, max |diff| 1.2e-07``.

    Args:
        d: the divergence.
        save_hint: what to say when no tensors were saved (how to run the second pass); None says nothing.
    """
    where = "" if d.trace == MAIN_OPTRACE else f" ({d.trace})"
    if d.kind == "stream":
        line = (f"op streams part at #{d.index_a}{where}, every op before it equal: run A runs "
                f"{describe_place(d.op, d.module if d.op else None, d.at if d.op else None, d.bwd, d.optim)}, "
                f"run B {describe_place(d.op_b, d.module_b, d.at_b, None, None)}")
        return [line]
    index = f"#{d.index_a}" if d.index_a == d.index_b else f"#{d.index_a} (#{d.index_b} in run B)"
    head = f"first differing op{where}: {index} {describe_place(d.op, d.module, d.at, d.bwd, d.optim)}"
    shape = f"{d.dtype}{list(d.shape) if d.shape is not None else ''}"
    if d.output:
        shape = f"output {d.output}, {shape}"
    out = next((t for t in d.tensors if t.name == f"output.{d.output}"), None)
    if out is not None:
        biggest = "" if out.max_abs_diff is None else f", max |diff| {out.max_abs_diff:.2g}"
        lines = [f"{head}, {shape}: {out.differ}/{out.elements} elements differ{biggest}"]
        changed = [t.name for t in d.tensors if t.name.startswith("input.") and t.differ]
        changed += [f"argument {name} ({a} in A, {b} in B)" for name, a, b in d.numbers]
        if changed:
            lines.append(f"  its inputs differ: {', '.join(changed)}; the difference came in from before this step "
                         "or from outside the traced ops")
        else:
            lines.append("  its inputs are equal in both runs: the op itself computed differently")
    else:
        lines = [f"{head}, {shape}" + (f" ({save_hint})" if save_hint else "")]
    if d.later:
        lines.append(f"  {d.later} later ops differ too")
    return lines


def render_op_comparison(c: OpComparison, save_hint: str | None = None) -> list[str]:
    """The whole comparison as lines: the first divergence, where the streams rejoin, and the notes."""
    lines: list[str] = []
    if not c.files:
        lines.append("no op traces in common (each run traced another process)")
    elif c.divergence is None:
        lines.append(f"every traced op agrees ({c.compared} compared)")
    for d in c.divergences[:1]:
        lines += render_op_divergence(d, save_hint)
    for d in c.after_rejoin[:1]:
        lines += ["after the streams rejoin, " + line for line in render_op_divergence(d, save_hint)[:1]]
    lines += [f"note: {n}" for n in c.notes]
    return lines


def render_op_finding(f: OpFinding, save_hint: str | None = None) -> list[str]:
    """The first op of an :class:`OpFinding` and where its evidence came from, as lines (the first one without
    indentation)."""
    c = f.comparison
    shown = dataclasses.replace(c, divergences=[f.divergence] if f.divergence else []) if f.saved else c
    lines = render_op_comparison(shown, None if f.saved else save_hint)
    source = f"op traces of step {f.step}: " + (f"reruns {' and '.join(f.runs)}" if f.runs else "the runs' own")
    if f.saved:
        source += f"; the op's tensors saved by reruns {' and '.join(f.saved_runs)}"
    lines.append(f"  ({source})")
    if f.note:
        lines.append(f"  note: {f.note}")
    return lines
