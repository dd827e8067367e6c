"""Op traces (envkit.injob.optrace) and their comparison (envkit.optdiff).

In-process tests train tiny models with the tracer installed here. The tests marked `slow` run real jobs in child
processes, started the way the bootstrap will start them (tests/unit/optrace_jobs/traced.py): two runs of a training
that perturbs one module's output from os.urandom; identical runs; the cost benchmark; and a native run against the
same script on an emulated Intel Haswell (qemu-x86_64-static).
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from envkit.errors import TraceError
from envkit.injob import optrace
from envkit.optdiff import (
    align,
    compare_optraces,
    first_op_divergence,
    read_optrace,
    render_op_comparison,
    render_op_divergence,
)
from envkit.savedtensors import read_safetensors, saved_diffs

REPO = Path(__file__).resolve().parents[2]
JOBS = Path(__file__).with_name("optrace_jobs")
PERTURB = JOBS / "perturb.py"
PERTURB_LINE = next(n for n, line in enumerate(PERTURB.read_text().splitlines(), 1) if "# PERTURB" in line)
QEMU = shutil.which("qemu-x86_64-static")


# --- in process ------------------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x) * 2)


def train(steps: int, folder: Path, step: int, shift: float = 0.0, **kwargs) -> Path:
    """Train a tiny model here with the op trace of `step` installed; the trace file."""
    path = folder / "optrace.jsonl"
    optrace.install(torch, step=step, path=str(path), **kwargs)
    try:
        torch.manual_seed(0)
        model = Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(16, 4) + shift
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    finally:
        optrace.uninstall()
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_step_is_recorded_op_by_op_with_modules_frames_and_backward(tmp_path: Path) -> None:
    path = train(4, tmp_path, step=2)
    header, *ops, end = lines(path)
    assert header["envkit_optrace"] == 1 and header["step"] == 2 and header["digest"] == "crc32"
    assert end == {**end, "end": True, "ops": len(ops), "complete": True, "truncated": False, "steps": 2}
    assert [o["i"] for o in ops] == list(range(len(ops)))
    here = f"{Path(__file__).name}:"
    forward = [o for o in ops if "bwd" not in o and "optim" not in o]
    assert [(o["op"], o.get("module")) for o in forward[:6]] == [
        ("aten::t", "encoder.0"), ("aten::addmm", "encoder.0"), ("aten::tanh", "encoder.1"),
        ("aten::detach", "encoder.1"), ("aten::mul.Tensor", "Net"), ("aten::t", "head")]
    assert all(Path(o["at"]).name.startswith(here) for o in ops), "every op points at this file, not torch's"
    # Backward ops name their autograd node and the module whose forward made it.
    mm = [o for o in ops if o["op"] == "aten::mm"]
    assert {(o["bwd"], o["module"]) for o in mm} == {("AddmmBackward0", "head"), ("AddmmBackward0", "encoder.0")}
    tanh_back = next(o for o in ops if o["op"] == "aten::tanh_backward")
    assert tanh_back["module"] == "encoder.1" and tanh_back["at"] == forward[2]["at"]
    # The update: SGD's in-place adds, one per parameter, and nothing after them.
    assert [o["op"] for o in ops if o.get("optim") == "SGD"] == ["aten::add_.Tensor"] * 4
    assert ops[-1].get("optim") == "SGD"
    out = forward[1]["out"][0]
    assert re.fullmatch(r"[0-9a-f]{8}", out[0]) and out[1:] == ["float32", [16, 8]]


def test_step_one_opens_at_the_first_forward_and_step_k_after_step_k_minus_one(tmp_path: Path) -> None:
    first = lines(train(3, tmp_path / "one", step=1))
    assert first[1]["op"] == "aten::t" and first[1]["module"] == "encoder.0"  # not the model's construction
    # Every step does the same ops (the data do not change), each step's numbers differ.
    steps = [lines(train(3, tmp_path / str(k), step=k))[1:-1] for k in (1, 2, 3)]
    assert [o["op"] for o in steps[0]] == [o["op"] for o in steps[1]] == [o["op"] for o in steps[2]]
    assert steps[1][1]["out"] != steps[2][1]["out"]


def test_identical_runs_agree_and_other_data_part_at_the_first_op_that_sees_them(tmp_path: Path) -> None:
    a = train(3, tmp_path / "a", step=2)
    b = train(3, tmp_path / "b", step=2)
    assert first_op_divergence(a, b) is None
    assert render_op_comparison(compare_optraces(a, b))[0].startswith("every traced op agrees (")
    # Other data from step 1 on: in step 1 the weights are still equal, the first op to see the data parts.
    a1, c1 = train(3, tmp_path / "a1", step=1), train(3, tmp_path / "c1", step=1, shift=1e-3)
    d = first_op_divergence(a1, c1)
    assert (d.kind, d.index_a, d.op, d.module, d.dtype, d.shape) == ("output", 1, "aten::addmm", "encoder.0",
                                                                     "float32", (16, 8))
    # In step 2 the weights differ already: the first op that reads one parts.
    c2 = train(3, tmp_path / "c2", step=2, shift=1e-3)
    assert (first_op_divergence(a, c2).index_a, first_op_divergence(a, c2).op) == (0, "aten::t")


def test_the_device_digest_is_order_free_and_sees_swaps_and_opposite_ulps() -> None:
    x = torch.randn(1000)
    digest = lambda t: int(optrace.device_digest(torch, t))
    assert digest(x) == digest(x.clone()) and digest(x[::2]) == digest(x[::2].contiguous())
    swapped = x.clone()
    swapped[[3, 7]] = x[[7, 3]]
    bits = x.clone().view(torch.int32)
    bits[10] += 1
    bits[20] -= 1  # one ulp up here, one down there: a plain sum of the words would not change
    assert len({digest(x), digest(swapped), digest(bits.view(torch.float32))}) == 3
    assert digest(torch.zeros(4)) != digest(torch.zeros(8)) and digest(torch.ones(3, dtype=torch.bool)) >= 0


def test_device_digests_are_fetched_in_batches_and_written_as_hex(tmp_path: Path) -> None:
    a = train(3, tmp_path / "a", step=2, digest=optrace.DEVICE_DIGEST)
    b = train(3, tmp_path / "b", step=2, digest=optrace.DEVICE_DIGEST)
    header, first, *_ = lines(a)
    assert header["digest"] == optrace.DEVICE_DIGEST and re.fullmatch(r"[0-9a-f]{16}", first["out"][0][0])
    assert first_op_divergence(a, b) is None
    crc = train(3, tmp_path / "c", step=2)
    with pytest.raises(TraceError, match="differ in digest"):
        compare_optraces(a, crc)


def test_a_window_stops_at_max_ops_and_a_job_that_ends_early_says_so(tmp_path: Path) -> None:
    *_, end = lines(train(3, tmp_path / "cut", step=2, max_ops=5))
    assert end["ops"] == 5 and end["truncated"] and end["complete"]  # the step ended; the record stopped early
    header, end = lines(train(2, tmp_path / "early", step=4))
    assert header["step"] == 4 and end["ops"] == 0 and not end["complete"] and end["steps"] == 2
    note = render_op_comparison(compare_optraces(tmp_path / "early", tmp_path / "early"))
    assert any("the job made 2 optimizer steps, the traced step is 4" in n for n in note)


def test_uninitialised_outputs_are_not_digested(tmp_path: Path) -> None:
    path = tmp_path / "optrace.jsonl"
    optrace.install(torch, step=1, path=str(path))
    try:
        layer = nn.Linear(2, 2)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        layer(torch.ones(1, 2)).sum().backward()
        torch.empty(3, 3)
        opt.step()
    finally:
        optrace.uninstall()
    empty = next(o for o in lines(path)[1:-1] if o["op"] == "aten::empty.memory_format")
    assert empty["out"] == [[optrace.UNINITIALISED, "float32", [3, 3]]]


def test_a_second_pass_saves_one_op_and_the_diff_counts_elements(tmp_path: Path) -> None:
    a = train(3, tmp_path / "a", step=1, save=[1])
    b = train(3, tmp_path / "b", step=1, save=[1], shift=1e-3)
    tensors, meta = read_safetensors(tmp_path / "a" / "optrace.op1.safetensors")
    assert meta["op"] == "aten::addmm" and meta["index"] == "1"
    assert sorted(tensors) == ["input.0", "input.1", "input.2", "output.0"]
    assert tensors["output.0"][:2] == ("F32", (16, 8))
    d = first_op_divergence(a, b)
    out = next(t for t in d.tensors if t.name == "output.0")
    assert out.elements == 128 and 0 < out.differ <= 128 and 0 < out.max_abs_diff < 1e-2
    text = render_op_divergence(d)
    assert re.fullmatch(r"first differing op: #1 aten::addmm in encoder\.0 \(test_optrace\.py:\d+\), "
                        r"float32\[16, 8\]: \d+/128 elements differ, max \|diff\| \S+", text[0]), text
    assert text[1] == ("  its inputs differ: input.1; the difference came in from before this step or from outside "
                       "the traced ops")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
                                   torch.bool])
def test_saved_tensors_are_read_without_torch_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    x = (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 4).to(dtype)
    y = x.clone()
    y[1, 2] = 1 if dtype == torch.bool else y[1, 2] + 3
    optrace.write_safetensors(str(tmp_path / "a.safetensors"), [("output.0", x)], {"numbers": "[[1, \"0.5\"]]"})
    optrace.write_safetensors(str(tmp_path / "b.safetensors"), [("output.0", y)], {"numbers": "[[1, \"0.25\"]]"})
    tensors, numbers = saved_diffs(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    want = 0 if dtype == torch.bool and bool(x[1, 2]) else 1  # bool: x[1, 2] may be True already
    assert (tensors[0].elements, tensors[0].differ) == (12, want)
    if want and dtype != torch.bool:
        assert tensors[0].max_abs_diff == pytest.approx(float((y[1, 2].double() - x[1, 2].double()).abs()))
    assert numbers == [("1", "0.5", "0.25")]


@pytest.mark.parametrize("damage", ["header length", "offsets", "shape", "not json"])
def test_a_damaged_tensor_file_is_one_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "x.safetensors"
    optrace.write_safetensors(str(path), [("output.0", torch.ones(4))], {})
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[:8], "little")
    header = data[8:8 + size].decode()
    if damage == "header length":
        data[:8] = (2**62).to_bytes(8, "little")
    elif damage == "offsets":
        data[8:8 + size] = header.replace("[0,16]", "[0,99]").ljust(size).encode()
    elif damage == "shape":
        data[8:8 + size] = header.replace("[4]", "[5]").ljust(size).encode()
    else:
        data[8:12] = b"\x00{{{"
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="is not a tensor file saved by the op tracer"):
        read_safetensors(path)


# --- op streams, read from written traces ----------------------------------------------------------------------------
def write_trace(path: Path, ops: list[tuple[str, str]], step: int = 3, end: bool = True) -> Path:
    """A trace of (op name, digest) pairs, each with one float32[4] output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"envkit_optrace": 1, "step": step, "digest": "crc32"}]
    rows += [{"i": i, "op": op, "out": [[digest, "float32", [4]]], "module": f"m{i}", "at": f"/w/t.py:{i}"}
             for i, (op, digest) in enumerate(ops)]
    if end:
        rows.append({"end": True, "ops": len(ops), "complete": True, "truncated": False, "steps": step})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


BASE = [("aten::mm", "01"), ("aten::add.Tensor", "02"), ("aten::relu", "03"), ("aten::sum", "04"),
        ("aten::mul.Tensor", "05")]


def test_an_op_inserted_on_one_side_is_where_the_streams_part_and_they_rejoin(tmp_path: Path) -> None:
    a = write_trace(tmp_path / "a" / "optrace.jsonl", BASE)
    write_trace(tmp_path / "b" / "optrace.jsonl", BASE[:2] + [("aten::clone", "aa")] + BASE[2:4] +
                    [("aten::mul.Tensor", "ff")])
    c = compare_optraces(tmp_path / "a", tmp_path / "b")
    d = c.divergence
    assert (d.kind, d.index_a, d.op, d.op_b, d.module, d.later) == ("stream", 2, "aten::relu", "aten::clone", "m2", 1)
    after = c.after_rejoin[0]
    assert (after.index_a, after.index_b, after.op) == (4, 5, "aten::mul.Tensor")
    text = render_op_comparison(c)
    assert text[0] == ("op streams part at #2, every op before it equal: run A runs aten::relu in m2 (t.py:2), "
                       "run B aten::clone in m2 (t.py:2)")
    assert text[1] == ("after the streams rejoin, first differing op: #4 (#5 in run B) aten::mul.Tensor in m4 "
                       "(t.py:4), float32[4]")
    # An output that differs before the streams part is the answer, not the parting.
    e = write_trace(tmp_path / "e" / "optrace.jsonl", [BASE[0], ("aten::add.Tensor", "xx")] + BASE[2:3] +
                    [("aten::neg", "00")])
    assert first_op_divergence(a, e).kind == "output" and first_op_divergence(a, e).index_a == 1


def test_long_repetitive_streams_line_up_around_an_insertion_and_a_deletion() -> None:
    layer = ["aten::t", "aten::addmm", "aten::tanh", "aten::detach"]
    a = [(layer[i % 4], i // 4 % 50) for i in range(200_000)]  # 50 layers of four ops, the shapes tell them apart
    b = a[:10] + [("aten::clone",)] + a[10:5000] + a[5004:]  # one op more early on, one layer fewer later
    pairs, parted = align(a, b)
    assert parted == (10, 10) and len(pairs) == len(a) - 4
    assert pairs[10] == (10, 11) and pairs[-1] == (len(a) - 1, len(b) - 1)
    assert align(a, a) == ([(i, i) for i in range(len(a))], None)
    assert align(a, a[:7]) == ([(i, i) for i in range(7)], (7, 7))


def test_a_trace_cut_short_parts_where_it_ends(tmp_path: Path) -> None:
    a = write_trace(tmp_path / "a.jsonl", BASE)
    b = write_trace(tmp_path / "b.jsonl", BASE[:3], end=False)
    c = compare_optraces(a, b)
    assert (c.divergence.kind, c.divergence.index_a, c.divergence.op, c.divergence.op_b) == ("stream", 3,
                                                                                           "aten::sum", None)
    assert "run B aten::sum" not in render_op_comparison(c)[0] and "(end of trace)" in render_op_comparison(c)[0]
    assert any("has no end record" in n for n in c.notes)


@pytest.mark.parametrize("text, message", [
    ("", "has no header line"),
    ('{"envkit_optrace": 9, "step": 1}\n', "has format 9"),
    ('{"envkit_optrace": 1, "step": 1}\nnot json\n{"end": true}\n', "line 2 is not JSON"),
    ('{"envkit_optrace": 1, "step": 1}\n{"i": "x", "op": 3}\n', "line 2 is not a header, op or end record"),
    ('[1, 2]\n', "line 1 is not a header, op or end record"),
])
def test_a_malformed_trace_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "optrace.jsonl"
    bad.write_text(text)
    with pytest.raises(TraceError, match=re.escape(message)):
        read_optrace(bad)


def test_traces_of_different_steps_are_refused(tmp_path: Path) -> None:
    a = write_trace(tmp_path / "a.jsonl", BASE, step=3)
    b = write_trace(tmp_path / "b.jsonl", BASE, step=4)
    with pytest.raises(TraceError, match="differ in step"):
        compare_optraces(a, b)


def test_a_cut_last_line_is_dropped_with_a_note(tmp_path: Path) -> None:
    write_trace(tmp_path / "a" / "optrace.jsonl", BASE)
    b = write_trace(tmp_path / "b" / "optrace.jsonl", BASE, end=False)
    b.write_text(b.read_text() + '{"i": 5, "op": "aten::m')
    c = compare_optraces(tmp_path / "a", tmp_path / "b")
    assert c.divergence is None and any("cut line" in n for n in c.notes)


def test_the_in_job_modules_import_only_the_standard_library_and_each_other() -> None:
    for path in (REPO / "envkit" / "injob").glob("*.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 9))  # images may have Python 3.9
        top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
        top |= {node.module.split(".")[0] for node in tree.body
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert top <= set(sys.stdlib_module_names), (path.name, top - set(sys.stdlib_module_names))
    code = "import sys, envkit.injob.optrace; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          check=False, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.strip() == "False", proc.stderr


# --- real jobs -------------------------------------------------------------------------------------------------------
def run_job(folder: Path, script: Path, *args: str, step: int, save: str = "", emulated: bool = False,
            timeout: int = 240) -> subprocess.CompletedProcess:
    """One job with its op trace of `step`, as the bootstrap will run it; its trace lands in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENVKIT_", "ATEN_", "ONEDNN_", "MKL_", "OMP_"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", ENVKIT_TRACE_OPS=str(step),
               ENVKIT_TRACE_OPS_FILE=str(folder / "optrace.jsonl"), ENVKIT_TRACE_OPS_SAVE=save)
    cmd = [sys.executable, str(JOBS / "traced.py"), str(script), *args]
    if emulated:
        cmd = [QEMU, "-cpu", "Haswell", *cmd]
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "envkit: warning" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.slow
def test_a_perturbed_module_is_named_with_its_op_and_identical_runs_agree(tmp_path: Path) -> None:
    # Two DataLoader workers, re-forked each epoch (step 5 starts a new epoch): they must trace nothing.
    runs = {name: tmp_path / name for name in ("a", "b", "same", "before")}
    for name in ("a", "b"):
        run_job(runs[name], PERTURB, "8", "--perturb", "5", "--workers", "2", step=5)
    run_job(runs["same"], PERTURB, "8", "--workers", "2", step=5)
    run_job(runs["before"], PERTURB, "8", "--perturb", "5", "--workers", "2", step=4)
    assert [p.name for p in runs["a"].glob("optrace*")] == ["optrace.jsonl"], "a worker wrote a trace"
    d = first_op_divergence(runs["a"], runs["b"])
    assert (d.kind, d.op, d.module, d.at) == ("output", "aten::add.Tensor", "encoder.1", f"{PERTURB}:{PERTURB_LINE}")
    assert d.later > 10  # everything downstream, backward and update included
    # Identical runs agree op for op, and so does the step before the perturbation.
    clean = tmp_path / "clean"
    run_job(clean, PERTURB, "8", "--workers", "2", step=5)
    assert first_op_divergence(runs["same"], clean) is None
    before = tmp_path / "before2"
    run_job(before, PERTURB, "8", "--perturb", "5", "--workers", "2", step=4)
    assert first_op_divergence(runs["before"], before) is None
    # The second pass: that op's tensors saved in both runs; the number added is what differs.
    for name in ("a", "b"):
        run_job(runs[name] / "pass2", PERTURB, "8", "--perturb", "5", step=5, save=str(d.index_a))
    d2 = first_op_divergence(runs["a"] / "pass2", runs["b"] / "pass2")
    out = next(t for t in d2.tensors if t.name == "output.0")
    assert (d2.index_a, out.elements, out.differ) == (d.index_a, 256, 256) and 0 < out.max_abs_diff < 1e-2
    assert [name for name, _a, _b in d2.numbers] == ["1"]  # the Python number added, argument 1 of add
    text = render_op_divergence(d2)
    assert text[0].startswith(f"first differing op: #{d.index_a} aten::add.Tensor in encoder.1 "
                              f"(perturb.py:{PERTURB_LINE}), float32[16, 16]: 256/256 elements differ, max |diff| ")
    print("\n".join(text))


@pytest.mark.slow
def test_the_cost_benchmark_prints_ratios(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_optrace.py"), "--rounds", "3"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("MLP", "CNN"):
        block = proc.stdout.split(label, 1)[1]
        assert re.search(r"armed \(outside the window\) / untraced: +\d+\.\d+", block)
        assert re.search(r"traced step / untraced step: +\d+\.\d+ +\(\d+\.\d us added per op\)", block)
    print(proc.stdout)


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None or platform.machine() != "x86_64",
                    reason="needs qemu-x86_64-static on an x86_64 host (apt-get install qemu-user-static)")
def test_a_native_run_and_an_emulated_haswell_part_at_a_named_op(tmp_path: Path) -> None:
    train_script = REPO / "examples" / "portable_train.py"
    here, there = tmp_path / "native", tmp_path / "haswell"
    run_job(here, train_script, str(here / "w.pt"), "--steps", "1", step=1)
    run_job(there, train_script, str(there / "w.pt"), "--steps", "1", step=1, emulated=True, timeout=900)
    d = first_op_divergence(here, there)
    assert d is not None and d.kind == "output", "the native CPU and the emulated Haswell computed the same step"
    assert d.op.startswith("aten::") and d.at.startswith(f"{train_script}:")
    # Second pass: the op's inputs and outputs. Its inputs are equal (the same data, the same initialisation):
    # the op itself computes differently on the two CPUs.
    run_job(here / "pass2", train_script, str(here / "w.pt"), "--steps", "1", step=1, save=str(d.index_a))
    run_job(there / "pass2", train_script, str(there / "w.pt"), "--steps", "1", step=1, save=str(d.index_a),
            emulated=True, timeout=900)
    d2 = first_op_divergence(here / "pass2", there / "pass2")
    assert (d2.index_a, d2.op) == (d.index_a, d.op)
    assert [t.name for t in d2.tensors if t.name.startswith("input.") and t.differ] == [] and not d2.numbers
    out = next(t for t in d2.tensors if t.name == f"output.{d2.output}")
    assert 0 < out.differ <= out.elements
    print("\n".join(render_op_divergence(d2)))
