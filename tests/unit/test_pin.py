"""Pinning a divergence down (envkit.pin) against the in-memory engine, and the --trace grammar behind it.

The fake engine's job writes what the real bootstrap's step trace and op trace would write for the variables it is
given (tests/unit/test_trace.py and test_optrace.py test those against real trainings): a training of 40 steps whose
parameters take a value from os.urandom at step 23, and whose op #3 of step 23 (aten::add.Tensor in encoder.1) is
the first op to differ. `--trace auto` is written as the sparse schedule it becomes on a real training (steps 0, 1,
2, 4, 8, 16, 32), so the recorded steps bracket the divergence between 16 and 32.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import EXIT_RUN_FAILED, TraceError
from envkit.pin import find, replay_pinner
from envkit.replay import replay
from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.run.tracing import parse_trace, trace_environment
from envkit.steptrace import AGREE, EARLIER, LATER, PINNED, compare_traces, describe_divergence, judge_pin
from envkit.store.filestore import FileStore

from .fakes import FakeEngine, JobContext, Outcome

QUIET = Sink(None, None)
STEPS, PERTURB, PERTURBED_OP = 40, 23, 3
OPS = [("aten::t", "encoder.0"), ("aten::addmm", "encoder.0"), ("aten::tanh", "encoder.1"),
       ("aten::add.Tensor", "encoder.1"), ("aten::mm", "head"), ("aten::add_.Tensor", None)]


def crc(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def training(perturb_when_saving: bool = True):
    """The fake training: its step trace, op trace and saved tensors as the bootstrap's would be."""

    def job(ctx: JobContext) -> Outcome:
        env, seed = ctx.env, ctx.env["ENVKIT_SEED"]
        saving = bool(env.get("ENVKIT_TRACE_OPS_SAVE"))
        salt = os.urandom(8).hex() if perturb_when_saving or not saving else ""

        def params(step: int) -> dict[str, str]:
            tag = f"{seed}:{step}" + (salt if step >= PERTURB else "")
            return {"w": crc(tag + "w"), "b": crc(tag + "b")}

        if "ENVKIT_TRACE_FILE" in env:
            interval, window = env.get("ENVKIT_TRACE"), env.get("ENVKIT_TRACE_STEPS")
            first, last = map(int, window.split("-")) if window else (-1, -1)
            due = [s for s in range(1, STEPS + 1) if (interval == "auto" and s & (s - 1) == 0)
                   or (interval not in (None, "auto") and s % int(interval) == 0) or first <= s <= last]
            rows = [{"envkit_trace": 1, "digest": "crc32", "interval": interval, "grads": False},
                    {"optimizer": 0, "type": "SGD", "params": [["w", "float32", [4]], ["b", "float32", [1]]]}]
            rows += [{"opt": 0, "step": s, "params": params(s)} for s in [0, *due]]
            rows.append({"opt": 0, "step": STEPS, "final": True, "params": params(STEPS)})
            write_lines(ctx.path(env["ENVKIT_TRACE_FILE"]), rows)
        if "ENVKIT_TRACE_OPS" in env:
            step, trace = int(env["ENVKIT_TRACE_OPS"]), ctx.path(env["ENVKIT_TRACE_OPS_FILE"])
            rows = [{"envkit_optrace": 1, "step": step, "digest": "crc32"}]
            for i, (op, module) in enumerate(OPS):
                perturbed = step > PERTURB or (step == PERTURB and i >= PERTURBED_OP)
                rows.append({"i": i, "op": op, "out": [[crc(f"{seed}:{step}:{i}" + (salt if perturbed else "")),
                                                        "float32", [4]]],
                             **({"module": module} if module else {"optim": "SGD"}), "at": f"/work/train.py:{20 + i}"})
            rows.append({"end": True, "ops": len(OPS), "complete": True, "truncated": False, "steps": STEPS})
            write_lines(trace, rows)
            for index in filter(None, env.get("ENVKIT_TRACE_OPS_SAVE", "").split(",")):
                delta = int(salt[:4], 16) / 2**20 if salt else 0.0
                save_tensors(Path(str(trace).removesuffix(".jsonl") + f".op{index}.safetensors"),
                             [1.0, 2.0, 3.0, 4.0], [1.5, 2.5 + delta, 3.5 + delta, 4.5])
        ctx.path("/work/model.bin").write_bytes(json.dumps(params(STEPS)).encode())
        return Outcome(0)

    return job


def save_tensors(path: Path, inputs: list[float], outputs: list[float]) -> None:
    """What the tracer's second pass writes: one op's input and output in the safetensors format."""
    header = {"input.0": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "output.0": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]},
              "__metadata__": {"op": "aten::add.Tensor", "numbers": "[]"}}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + struct.pack("<4f", *inputs) + struct.pack("<4f", *outputs))


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    (p / "train.py").write_text("print('the fake engine does not run me')\n")
    return p


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileStore:
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "store"))
    return FileStore(tmp_path / "store")


def start(engine: FakeEngine, store: FileStore, project: Path, image: str, trace: str = "auto"):
    return run(engine, store, RunRequest(script="train.py", seed=7, image=image, project=project, trace=trace),
               sink=QUIET)


def pin_runs(store: FileStore) -> list:
    return [store.read(r.run_id) for r in store.list().runs if store.read(r.run_id).pin_for]


# --- replay pins the exact step ------------------------------------------------------------------------------------------
def test_a_replay_bracketed_by_sparse_steps_reruns_both_jobs_and_names_the_exact_step(project, store):
    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", training()))
    messages: list[str] = []
    result = replay(engine, store, original.run_id, sink=QUIET, after_judge=replay_pinner(engine, store,
                                                                                             messages.append))
    d = result.verdict.divergence
    assert result.verdict.kind == "DIVERGED" and (d["step"], d["last_equal"], d["params"]) == (23, 22, ["w", "b"])
    assert d["recorded"] == {"step": 32, "last_equal": 16, "params": ["w", "b"], "grads": []}
    assert d["message"] == "training diverged at step 23 (parameters: w, b)"
    pins = pin_runs(store)
    assert sorted(p.replay_of for p in pins) == sorted([original.run_id, result.run_id])
    assert {p.trace for p in pins} == {"off,steps:16-32"} and {tuple(p.pin_for) for p in pins} == {
        (original.run_id, result.run_id)}
    assert pins[0].environment["ENVKIT_TRACE_STEPS"] == "16-32" and "ENVKIT_TRACE" not in pins[0].environment
    assert d["pin"]["outcome"] == PINNED and sorted(d["pin"]["runs"]) == sorted(p.run_id for p in pins)
    assert d["pin_message"] == ("recorded steps 16 and 32 bracketed it; reruns of both jobs that traced every step "
                                f"from 16 to 32 part at step 23 (runs {', '.join(d['pin']['runs'])})")
    assert len(messages) == 2 and "--trace off,steps:16-32" in messages[0]
    assert store.read(result.run_id).verdict["divergence"]["step"] == 23  # in the replay's record, written once


def test_without_the_pin_the_verdict_keeps_the_recorded_bracket(project, store):
    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", training()))
    d = replay(engine, store, original.run_id, sink=QUIET).verdict.divergence
    assert (d["step"], d["last_equal"]) == (32, 16) and "pin" not in d
    assert d["message"] == "training diverged at step 32, last equal recorded step 16 (parameters: w, b)"
    assert pin_runs(store) == []


def test_a_forced_replay_on_another_platform_is_not_pinned(project, store):
    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", training()))
    record = store.read(original.run_id)
    record.fingerprint.host["cpu_vendor"] = "AuthenticAMD" if record.fingerprint.host.get(
        "cpu_vendor") == "GenuineIntel" else "GenuineIntel"
    store.write(record)
    d = replay(engine, store, original.run_id, force=True, sink=QUIET,
               after_judge=replay_pinner(engine, store)).verdict.divergence
    assert d["step"] == 32 and d["pin"]["outcome"] == "failed" and "(--force)" in d["pin_message"]
    assert pin_runs(store) == []


# --- diff: what the store holds, and --pin for the rest -----------------------------------------------------------------
def test_diff_shows_the_replays_pin_and_pin_reruns_for_the_first_op_and_its_elements(project, store, capsys):
    engine = FakeEngine()
    original = start(engine, store, project, engine.add_image("img", training()))
    replayed = replay(engine, store, original.run_id, sink=QUIET, after_judge=replay_pinner(engine, store))
    a, b = store.read(original.run_id), store.read(replayed.run_id)
    found = find(None, store, a, b)  # no engine: nothing is rerun
    assert found.pinned.outcome == PINNED and found.pinned.step == 23 and found.ops is None
    assert found.hints == [f"`envkit diff --pin {a.run_id} {b.run_id}` reruns both jobs with the ops of step 23 "
                           "traced, to name the first op that differs"]
    assert main(["diff", a.run_id, b.run_id]) == 0
    out = capsys.readouterr().out
    assert "Training diverged at step 23 (parameters: w, b)." in out and "  pin: recorded steps 16 and 32" in out

    found = find(engine, store, a, b, rerun=True)
    first = found.ops.divergence
    assert (found.ops.step, first.index_a, first.op, first.module, first.at) == (
        23, PERTURBED_OP, "aten::add.Tensor", "encoder.1", "/work/train.py:23")
    out_diff = next(t for t in first.tensors if t.name == "output.0")
    assert (out_diff.elements, out_diff.differ) == (4, 2) and out_diff.max_abs_diff > 0
    assert not [t for t in first.tensors if t.name == "input.0" and t.differ]
    traces = sorted(p.trace for p in pin_runs(store))
    assert traces == ["off,ops:23", "off,ops:23", "off,ops:23,save:3", "off,ops:23,save:3", "off,steps:16-32",
                      "off,steps:16-32"], "the step pin was found, not made again"
    assert found.hints == []
    # Shown again without rerunning anything.
    assert main(["diff", a.run_id, b.run_id]) == 0
    out = capsys.readouterr().out
    assert ("  first differing op: #3 aten::add.Tensor in encoder.1 (train.py:23), float32[4]: 2/4 elements differ, "
            "max |diff| ") in out
    assert "    its inputs are equal in both runs: the op itself computed differently" in out
    assert len(pin_runs(store)) == 6


def test_runs_with_their_own_op_traces_need_only_the_second_pass(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", training())
    a, b = start(engine, store, project, image, "1,ops:23"), start(engine, store, project, image, "1,ops:23")
    assert a.trace == "1,ops:23" and a.environment["ENVKIT_TRACE_OPS"] == "23"
    found = find(None, store, a, b)
    assert found.pinned is None and found.ops.runs == [] and found.ops.divergence.index_a == PERTURBED_OP
    assert "saving the inputs and outputs of op #3 of step 23" in found.hints[0]
    found = find(engine, store, a, b, rerun=True)
    assert found.ops.saved is not None and [p.trace for p in pin_runs(store)] == ["off,ops:23,save:3"] * 2


def test_a_second_pass_that_does_not_part_at_the_same_op_gives_no_counts(project, store):
    """A difference that came from the hosts does not happen again when both reruns run here."""
    engine = FakeEngine()
    image = engine.add_image("img", training(perturb_when_saving=False))
    a, b = start(engine, store, project, image, "1,ops:23"), start(engine, store, project, image, "1,ops:23")
    found = find(engine, store, a, b, rerun=True)
    assert found.ops.saved is None and found.ops.divergence.tensors == []
    assert found.ops.note.startswith("the reruns that saved op #3 agree there")


def test_ops_without_a_step_traces_the_step_pinned_last_for_the_script(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", training())
    with pytest.raises(TraceError, match="no divergent step is known for train.py"):
        start(engine, store, project, image, "ops")
    original = start(engine, store, project, image)
    replay(engine, store, original.run_id, sink=QUIET, after_judge=replay_pinner(engine, store))
    record = start(engine, store, project, image, "ops")
    assert record.trace == "auto,ops:23" and record.environment["ENVKIT_TRACE_OPS"] == "23"


def test_a_rerun_that_fails_stops_the_pin_with_a_note(project, store):
    engine = FakeEngine()
    works = training()

    def fails_when_pinning(ctx: JobContext) -> Outcome:
        return Outcome(1, stderr=b"out of memory\n") if "ENVKIT_TRACE_STEPS" in ctx.env else works(ctx)

    original = start(engine, store, project, engine.add_image("img", fails_when_pinning))
    result = replay(engine, store, original.run_id, sink=QUIET, after_judge=replay_pinner(engine, store))
    d = result.verdict.divergence
    assert result.verdict.kind == "DIVERGED" and d["step"] == 32 and d["pin"]["outcome"] == "failed"
    assert d["pin_message"].startswith("not pinned: the rerun ") and d["pin_message"].endswith(
        "of run A's job ended failed")
    assert len(pin_runs(store)) == 1, "the other job was not rerun for nothing"
    found = find(engine, store, original, result.record, rerun=True)
    assert found.pinned is None and found.notes[0].startswith("--pin stopped: the rerun ")


# --- the traces behind it --------------------------------------------------------------------------------------------------
def step_trace(path: Path, steps: dict[int, str], final: tuple[int, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"envkit_trace": 1, "digest": "crc32"}, {"optimizer": 0, "type": "SGD", "params": [["w", "f", [1]]]}]
    rows += [{"opt": 0, "step": s, "params": {"w": v}} for s, v in steps.items()]
    rows.append({"opt": 0, "step": final[0], "final": True, "params": {"w": final[1]}})
    write_lines(path, rows)
    return path


def test_a_final_record_after_unrecorded_steps_is_a_step_not_a_change_after_training(tmp_path):
    a = step_trace(tmp_path / "a" / "trace.jsonl", {0: "x", 16: "y", 32: "z"}, (40, "f"))
    b = step_trace(tmp_path / "b" / "trace.jsonl", {0: "x", 16: "y", 32: "z"}, (40, "g"))
    d = compare_traces(a, b).divergence
    assert (d.step, d.final, d.last_equal, d.pinnable, d.bracket) == (40, False, 32, True, (32, 40))
    assert describe_divergence(d) == "at step 40, last equal recorded step 32 (parameters: w)"
    c = step_trace(tmp_path / "c" / "trace.jsonl", {0: "x", 16: "y", 32: "z", 40: "f"}, (40, "f"))
    e = step_trace(tmp_path / "e" / "trace.jsonl", {0: "x", 16: "y", 32: "z", 40: "f"}, (40, "g"))
    d = compare_traces(c, e).divergence
    assert (d.step, d.final, d.pinnable, d.op_step) == (40, True, False, None)
    assert describe_divergence(d).startswith("after the last optimizer step (step 40): every recorded step agrees")


@pytest.mark.parametrize("b_steps, outcome, step", [
    ({16: "y", 17: "y", 18: "Q", 19: "Q", 20: "Q"}, PINNED, 18),
    ({16: "Q", 17: "Q", 18: "Q", 19: "Q", 20: "Q"}, EARLIER, 16),
    ({16: "y", 17: "y", 18: "y", 19: "y", 20: "y"}, LATER, None),
])
def test_the_reruns_traces_pin_the_step_or_say_where_it_moved(tmp_path, b_steps, outcome, step):
    base = {0: "x", 16: "y", 17: "y", 18: "y", 19: "y", 20: "y"}
    step_trace(tmp_path / "a" / "meta" / "trace.jsonl", base, (30, "f"))
    step_trace(tmp_path / "b" / "meta" / "trace.jsonl", {0: "x", **b_steps}, (30, "g"))
    p = judge_pin(tmp_path / "a", tmp_path / "b", 16, 20, ["ra", "rb"])
    assert (p.outcome, p.step) == (outcome, step)
    step_trace(tmp_path / "c" / "meta" / "trace.jsonl", base, (30, "f"))
    assert judge_pin(tmp_path / "a", tmp_path / "c", 16, 20, ["ra", "rc"]).outcome == AGREE


# --- the --trace grammar -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, normal", [
    ("auto", "auto"), ("off", "off"), ("7", "7"), ("ops:5", "auto,ops:5"), ("ops", "auto,ops"),
    ("off,ops:3", "off,ops:3"), ("ops:5, 1", "1,ops:5"), ("off,steps:4-8", "off,steps:4-8"),
    ("off,ops:5,save:12+3", "off,ops:5,save:3+12"),
])
def test_trace_values_normalise(text, normal):
    assert str(parse_trace(text)) == normal


@pytest.mark.parametrize("text, message", [
    ("sometimes", "is not auto, off"), ("0", "is not auto, off"), ("auto,2", "two step-trace intervals"),
    ("ops:0", "is not auto, off"), ("steps:8-4", "ends before it starts"), ("ops,save:3", "needs an op trace of a"),
    ("ops:2,ops:3", "two op traces"),
])
def test_bad_trace_values_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_trace(text)


def test_the_job_gets_the_variables_of_each_trace():
    assert trace_environment("off", "/m") == {}
    assert trace_environment("auto", "/m") == {"ENVKIT_TRACE": "auto", "ENVKIT_TRACE_FILE": "/m/trace.jsonl"}
    assert trace_environment("off,steps:4-8,ops:6,save:2", "/m") == {
        "ENVKIT_TRACE_FILE": "/m/trace.jsonl", "ENVKIT_TRACE_STEPS": "4-8", "ENVKIT_TRACE_OPS": "6",
        "ENVKIT_TRACE_OPS_FILE": "/m/optrace.jsonl", "ENVKIT_TRACE_OPS_SAVE": "2"}
    with pytest.raises(TraceError, match="not resolved"):
        trace_environment("ops", "/m")


def test_a_bad_trace_option_is_one_line(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert main(["run", "--seed", "1", "--trace", "ops:x", "train.py"]) == EXIT_RUN_FAILED  # envkit's, not the job's
    err = capsys.readouterr().err
    assert "'ops:x' is not auto, off, a step interval N" in err and "Traceback" not in err
