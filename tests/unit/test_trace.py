"""Step traces and envkit diff: real training jobs under the real bootstrap, traced, compared.

The jobs run with a venv's python whose site-packages hold the in-job package (``envkit_injob``, the trace module
included) and its ``.pth``, exactly as an image has them; the environment is what
``envkit run --trace N`` gives the container.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import pytest

from envkit import settings
from envkit.cli import main
from envkit.diff import (
    DIVERGED,
    WRITTEN_DIFFERENTLY,
    compare_traces,
    describe_divergence,
    diff_runs,
    first_divergence,
    first_divergence_in_runs,
    read_trace,
    render_diff,
)
from envkit.errors import TraceError
from envkit.injob import trace
from envkit.manifest import manifest
from envkit.store.filestore import FileStore
from envkit.store.record import ImageInfo, RunRecord
from tests.unit.bootstrap.conftest import install_bootstrap

REPO = Path(__file__).resolve().parents[2]
JOB = Path(__file__).with_name("trace_jobs") / "train.py"
PARAMS = ["body.0.weight", "body.0.bias", "head.weight", "head.bias", "group1.param0"]


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("trace-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    install_bootstrap(purelib)  # the in-job package, trace included, as the image build installs it
    return py


class Job:
    def __init__(self, folder: Path, proc: subprocess.Popen) -> None:
        self.folder, self.proc = folder, proc
        self.meta, self.work = folder / "meta", folder / "work"

    def wait(self) -> Job:
        out, err = self.proc.communicate(timeout=240)
        assert self.proc.returncode == 0, err[-3000:]
        assert "envkit: warning" not in err, err
        return self


def start(python: Path, folder: Path, seed: int, interval: str, *args: str, grads: bool = False) -> Job:
    """One job with the environment `envkit run --seed SEED --trace INTERVAL` gives the container."""
    meta, work = folder / "meta", folder / "work"
    meta.mkdir(parents=True)
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_") and k not in ("RANK", "PYTHONHASHSEED")}
    env.update(ENVKIT_SEED=str(seed), PYTHONHASHSEED=str(seed), ENVKIT_DETERMINISM="strict", ENVKIT_THREADS="1",
               OMP_NUM_THREADS="1", ENVKIT_REPORT_DIR=str(meta), ENVKIT_TRACE=interval,
               ENVKIT_TRACE_FILE=str(meta / "trace.jsonl"), ENVKIT_TRACE_GRADS="1" if grads else "0")
    proc = subprocess.Popen([str(python), str(JOB), *args], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return Job(folder, proc)


@pytest.fixture(scope="module")
def jobs(python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Job]:
    """Two runs poisoned at step 7, one with another seed, two clean ones that stamp their checkpoint's metadata."""
    root = tmp_path_factory.mktemp("trace-jobs")
    specs = {
        "poisoned1": (5, "1", "20", "--poison", "7"),
        "poisoned2": (5, "1", "20", "--poison", "7"),
        "other_seed": (6, "1", "20", "--poison", "7"),
        "stamped1": (5, "2", "40", "--stamp"),
        "stamped2": (5, "auto", "40", "--stamp"),
    }
    done = {}
    names = list(specs)
    for i in range(0, len(names), 2):  # two at a time: the machine has two cores for everyone
        batch = {n: start(python, root / n, specs[n][0], specs[n][1], *specs[n][2:], grads=n.startswith("poison"))
                 for n in names[i:i + 2]}
        done.update({n: job.wait() for n, job in batch.items()})
    return done


def records(job: Job) -> list[dict]:
    return [json.loads(line) for line in (job.meta / "trace.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_trace_names_parameters_as_state_dict_does_and_records_init_every_step_and_the_end(jobs):
    lines = records(jobs["poisoned1"])
    header, layout, steps = lines[0], lines[1], lines[2:]
    assert header["envkit_trace"] == 1 and header["digest"] == "crc32" and header["interval"] == 1
    assert header["grads"] is True and header["rank"] is None
    assert layout["type"] == "SGD"
    assert layout["params"] == [["body.0.weight", "float32", [16, 8]], ["body.0.bias", "float32", [16]],
                                ["head.weight", "float32", [1, 16]], ["head.bias", "float32", [1]],
                                ["group1.param0", "float32", [1]]]
    assert [s["step"] for s in steps] == list(range(21)) + [20]
    assert steps[-1]["final"] is True and steps[-1]["params"] == steps[-2]["params"]
    assert all(list(s["params"]) == PARAMS and list(s["grads"]) == PARAMS for s in steps)
    assert len({s["params"]["head.weight"] for s in steps[:-1]}) == 21  # every update changes the digest
    # The bootstrap names the extension it installed in its report, and only the main process wrote a trace.
    reports = [json.loads(p.read_text()) for p in jobs["poisoned1"].meta.glob("bootstrap-*.json")]
    assert [r["extensions"] for r in reports] == [["trace"]]
    assert sorted(p.name for p in jobs["poisoned1"].meta.glob("trace*")) == ["trace.jsonl"]


@pytest.mark.slow
def test_the_diff_names_the_poisoned_step_and_parameter(jobs):
    a, b = jobs["poisoned1"], jobs["poisoned2"]
    d = first_divergence(a.meta / "trace.jsonl", b.meta / "trace.jsonl")
    assert d is not None
    assert (d.step, d.last_equal, d.final, d.at_initialisation) == (7, 6, False, False)
    assert d.params == ["head.weight"]
    assert d.grads == []  # the gradients of step 7 came before the poison
    assert describe_divergence(d) == "at step 7 (parameters: head.weight)"
    # The same through the run folders, as replay asks for it.
    verdict = first_divergence_in_runs(a.folder, b.folder)
    assert verdict["step"] == 7 and verdict["params"] == ["head.weight"]
    assert verdict["message"] == "training diverged at step 7 (parameters: head.weight)"


@pytest.mark.slow
def test_runs_with_different_seeds_diverge_at_initialisation(jobs):
    t = compare_traces(jobs["poisoned1"].folder, jobs["other_seed"].folder)
    d = t.divergence
    assert d is not None and d.step == 0 and d.at_initialisation
    assert d.params == PARAMS[:4]  # the bare `scale` tensor starts at ones in both
    assert describe_divergence(d).startswith("at initialisation: the parameters differ before the first optimizer")
    assert t.final_equal is False


@pytest.mark.slow
def test_equal_training_with_a_differently_written_file_is_reported_as_such(jobs, tmp_path):
    a, b = jobs["stamped1"], jobs["stamped2"]
    t = compare_traces(a.folder, b.folder)
    assert t.divergence is None and t.final_equal is True
    # Interval 2 against auto: auto's gaps are powers of two that only grow, so the two share steps 0, 2, 4, ...
    steps = [r["step"] for r in records(b)[2:-1]]
    gaps = [y - x for x, y in pairwise(steps)]
    assert steps[:2] == [0, 1] and all(g & (g - 1) == 0 for g in gaps) and gaps == sorted(gaps)
    assert all(s % g == 0 for s, g in zip(steps[1:], gaps, strict=True))
    assert t.compared == len([s for s in steps if s % 2 == 0]) + 1
    ra, rb = run_record(a.work, seed=5), run_record(b.work, seed=5)
    result = diff_runs(ra, rb, a.folder, b.folder)
    assert result.verdict == WRITTEN_DIFFERENTLY
    assert [c.path for c in result.outputs] == ["meta.json"]  # model.pt is bit-identical
    assert [x.name for x in result.differences if x.changes_numerics] == []
    text = render_diff(result)
    assert "parameters are equal at the end of training, but outputs differ" in text
    assert "meta.json" in text and "model.pt" not in text


def run_record(work: Path, seed: int, run_id: str = "20260101T000000000Z-0000000a", **fields) -> RunRecord:
    """The record `envkit run` would have written for a job: its outputs hashed from its working folder."""
    return RunRecord(run_id=run_id, status="succeeded", exit_code=0, seed=seed, script="train.py",
                     outputs=manifest(work).entries, image=ImageInfo(id="sha256:" + "1" * 64), **fields)


@pytest.fixture
def store(tmp_path, monkeypatch) -> FileStore:
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "store"))
    return FileStore(tmp_path / "store", durable=False)


def stored(store: FileStore, job: Job, seed: int, traced: bool = True, **fields) -> str:
    """The job as a run in the store: its record, and its meta folder (with the trace) where `traced`."""
    run_id = store.create_run()
    if traced:
        shutil.copytree(job.meta, store.run_dir(run_id) / "meta")
    store.write(run_record(job.work, seed, run_id, **fields))
    return run_id


@pytest.mark.slow
def test_envkit_diff_prints_the_step_parameter_and_what_differs(jobs, store, capsys):
    a = stored(store, jobs["poisoned1"], 5)
    b = stored(store, jobs["other_seed"], 6, replay_of=a, environment={"OMP_NUM_THREADS": "2"})
    c = stored(store, jobs["poisoned2"], 5)
    assert main(["diff", a, c]) == 0
    out = capsys.readouterr().out
    assert "Training diverged at step 7 (parameters: head.weight)." in out
    assert "Nothing that changes the numbers differs between the records" in out

    assert main(["diff", a, b]) == 0
    out = capsys.readouterr().out
    assert f"run B {b}  (B replays A)" in out
    assert "Training diverged at initialisation" in out
    assert "seed         seed: 5 -> 6" in out
    assert "environment  OMP_NUM_THREADS: - -> 2" in out
    assert main(["diff", a, b, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == DIVERGED
    assert data["trace"]["divergence"]["at_initialisation"] is True
    assert {d["name"] for d in data["differences"]} >= {"seed", "OMP_NUM_THREADS"}


@pytest.mark.slow
def test_envkit_diff_without_traces_still_lists_the_differences(jobs, store, capsys):
    a = stored(store, jobs["stamped1"], 5, traced=False, threads=1)
    b = stored(store, jobs["stamped1"], 5, traced=False, threads=4)
    assert main(["diff", a, b]) == 0
    out = capsys.readouterr().out
    assert "no step trace in run A and B (run with --trace N to record one)" in out
    assert "Identical: every output matches." in out
    assert "threads      threads: 1 -> 4" in out


@pytest.mark.parametrize("args, code", [(["diff", "nope", "20260101T000000000Z-0000000a"], 32),
                                        (["diff", "20260101T000000000Z-0000000a", "20260101T000000000Z-0000000b"], 31)])
def test_envkit_diff_rejects_bad_and_unknown_run_ids(store, capsys, args, code):
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "hint: " in err and "Traceback" not in err


@pytest.mark.slow
def test_each_torchrun_rank_writes_its_own_trace_and_data_parallel_ranks_agree(python, tmp_path):
    meta = tmp_path / "meta"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_") and k not in ("RANK", "PYTHONHASHSEED")}
    env.update(ENVKIT_SEED="3", PYTHONHASHSEED="3", ENVKIT_REPORT_DIR=str(meta), ENVKIT_TRACE="1",
               ENVKIT_TRACE_FILE=str(meta / "trace.jsonl"))
    job = REPO / "tests" / "unit" / "bootstrap" / "jobs" / "ddp.py"
    r = subprocess.run([str(python), "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(job),
                        str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    # The launcher and the DataLoader workers never step an optimizer: they write nothing.
    assert sorted(p.name for p in meta.glob("trace*")) == ["trace.rank0.jsonl", "trace.rank1.jsonl"]
    rank1 = [json.loads(line) for line in (meta / "trace.rank1.jsonl").read_text().splitlines()]
    assert rank1[0]["rank"] == 1
    assert [name for name, _dtype, _shape in rank1[1]["params"]] == ["module.weight", "module.bias"]  # DDP's names
    t = compare_traces(meta / "trace.rank0.jsonl", meta / "trace.rank1.jsonl")  # two files: compared as given
    assert t.divergence is None and t.final_equal is True and t.compared == len(rank1) - 2


# --- the file format, without torch --------------------------------------------------------------------------------
HEADER = '{"envkit_trace":1,"digest":"crc32","interval":1,"grads":false,"pid":1,"rank":null,"torch":"x"}'


def write_trace(path: Path, *lines: str, header: str = HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, '{"optimizer":0,"type":"SGD","params":[["w","float32",[2]]]}', *lines]))
    return path


def test_a_line_cut_by_a_killed_job_is_dropped_with_a_note(tmp_path):
    a = write_trace(tmp_path / "a" / "trace.jsonl", '{"opt":0,"step":0,"params":{"w":"1"}}',
                    '{"opt":0,"step":1,"params":{"w":"2"}}\n')
    b = write_trace(tmp_path / "b" / "trace.jsonl", '{"opt":0,"step":0,"params":{"w":"1"}}', '{"opt":0,"step":1,"pa')
    t = compare_traces(a, b)
    assert t.divergence is None and t.compared == 1 and read_trace(b).truncated
    assert "trace.jsonl of run B ends with a cut line (the job was killed while writing)" in t.notes


@pytest.mark.parametrize("lines, header, message", [
    (['{"opt":0,"step":0,"pa', '{"opt":0,"step":1,"params":{}}'], HEADER, "line 3 is not JSON"),
    (["[1, 2]"], HEADER, "line 3 is not a JSON object"),
    (['{"opt":0,"step":"seven","params":{}}'], HEADER, "line 3 is not a header, optimizer or step record"),
    ([], HEADER.replace('"envkit_trace":1', '"envkit_trace":9'), "has format 9; this envkit reads 1"),
])
def test_a_malformed_trace_is_one_clear_error(tmp_path, lines, header, message):
    path = write_trace(tmp_path / "trace.jsonl", *lines, header=header)
    with pytest.raises(TraceError, match=message) as info:
        compare_traces(path, path)
    assert info.value.exit_code == 50


def test_traces_made_with_different_digests_do_not_compare(tmp_path):
    a = write_trace(tmp_path / "a" / "trace.jsonl")
    b = write_trace(tmp_path / "b" / "trace.jsonl", header=HEADER.replace("crc32", "blake2b"))
    with pytest.raises(TraceError, match="different digests"):
        first_divergence(a, b)


def test_a_divergence_between_sparse_records_is_bracketed(tmp_path):
    a = write_trace(tmp_path / "a" / "trace.jsonl", *(f'{{"opt":0,"step":{s},"params":{{"w":"{min(s, 40)}"}}}}'
                                                      for s in range(0, 101, 10)))
    b = write_trace(tmp_path / "b" / "trace.jsonl", *(f'{{"opt":0,"step":{s},"params":{{"w":"{min(s, 33)}"}}}}'
                                                      for s in range(0, 101, 20)))
    d = first_divergence(a, b)
    assert (d.step, d.last_equal) == (40, 20)
    assert describe_divergence(d) == "at step 40, last equal recorded step 20 (parameters: w)"


def test_the_digest_is_the_crc32_of_the_tensor_bytes_whatever_its_layout_or_dtype():
    import zlib

    import torch

    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert trace.digest(x) == f"{zlib.crc32(x.numpy().tobytes()):08x}"
    assert trace.digest(x.t()) == trace.digest(x.t().contiguous()) != trace.digest(x)
    y = x.clone()
    y.view(torch.int32)[1, 2] ^= 1  # one bit of one mantissa
    assert trace.digest(y) != trace.digest(x)
    b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16, requires_grad=True)  # no numpy dtype for bfloat16
    assert trace.digest(b) == f"{zlib.crc32(b.detach().view(torch.int16).numpy().tobytes()):08x}"
    assert trace.digest(torch.empty(0)) == "00000000"


def test_trace_file_names_and_intervals():
    assert trace.file_name("trace.jsonl") == "trace.jsonl"
    assert trace.file_name("trace.jsonl", rank=3) == "trace.rank3.jsonl"
    assert trace.file_name("trace.jsonl", rank=0, n=2) == "trace.rank0.2.jsonl"
    assert trace.parse_interval(" 25 ") == 25 and trace.parse_interval("AUTO") == "auto"
    for bad in ("0", "-3", "off", "ten"):
        with pytest.raises(ValueError, match="ENVKIT_TRACE="):
            trace.parse_interval(bad)


def test_the_auto_interval_is_the_default_trace_setting():
    assert trace.AUTO == settings.DEFAULT_TRACE
