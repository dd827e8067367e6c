"""Real jobs against the in-memory engine (tests/unit/fakes.py): any command, its processes and world size, a verdict
that compares something (stdout when there is no output file), run ids by prefix and `last`, and exit codes of
`envkit run` that cannot be taken for the job's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from envkit.errors import (
    AmbiguousRunIdError,
    InvalidRunIdError,
    RunNotFoundError,
    ScriptNotFoundError,
)
from envkit.replay import replay
from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.stdoutcompare import compare_stdout
from envkit.store.filestore import FileStore

from .fakes import FakeEngine, JobContext, Outcome

QUIET = Sink(None, None)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    (p / "pkg").mkdir(parents=True)
    (p / "pkg" / "__init__.py").write_text("")
    (p / "pkg" / "train.py").write_text("print('the fake engine does not run me')\n")
    (p / "train.py").write_text("")
    return p


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def go(engine: FakeEngine, store: FileStore, project: Path, image: str, **kw):
    kw.setdefault("script", "")
    return run(engine, store, RunRequest(seed=kw.pop("seed", 3), image=image, project=project, trace="off", **kw),
               sink=QUIET)


def printing(text: bytes):
    return lambda ctx: Outcome(0, stdout=text)


# --- any command ------------------------------------------------------------------------------------------------------
def torchrun_like(ctx: JobContext) -> Outcome:
    """What a 2-rank torchrun leaves: the launcher's report and one per rank (each saw WORLD_SIZE=2)."""
    meta = ctx.path("/envkit/meta")
    reports = [{"role": "main", "rank": None, "world_size": None, "pid": 1}]
    reports += [{"role": f"rank {r}", "rank": r, "world_size": 2, "pid": 2 + r} for r in (0, 1)]
    for report in reports:
        (meta / f"bootstrap-{report['pid']}.json").write_text(json.dumps(report))
    ctx.path("/work/model.bin").write_bytes(ctx.env["ENVKIT_SEED"].encode())
    return Outcome(0)


def test_a_command_runs_as_given_and_its_record_holds_argv_world_size_and_processes(project, store):
    engine = FakeEngine()
    argv = ["torchrun", "--nproc-per-node", "2", "train.py", "--api-key", "s3cret"]
    record = go(engine, store, project, engine.add_image("img", torchrun_like), argv=argv)
    spec = next(arg for call, arg in engine.calls if call == "create")
    assert spec.command == argv  # the secret is the job's to see...
    assert record.argv == ["torchrun", "--nproc-per-node", "2", "train.py", "--api-key", "<redacted>"]  # ...not disk's
    assert record.script is None and record.world_size == 2 and record.processes == 3
    assert store.list().rows[0]["script"].startswith("torchrun --nproc-per-node 2")


def test_replay_runs_the_same_command(project, store):
    engine = FakeEngine()
    original = go(engine, store, project, engine.add_image("img", torchrun_like), argv=["python", "-m", "pkg.train"])
    result = replay(engine, store, original.run_id, sink=QUIET)
    commands = [arg.command for call, arg in engine.calls if call == "create"]
    assert commands == [["python", "-m", "pkg.train"]] * 2 and result.verdict.kind == "IDENTICAL"


def test_diff_names_another_command_and_world_size(project, store):
    from envkit.diff import record_differences

    engine = FakeEngine()
    image = engine.add_image("img", torchrun_like)
    a = go(engine, store, project, image, argv=["torchrun", "--nproc-per-node", "2", "train.py"])
    b = go(engine, store, project, image, argv=["torchrun", "--nproc-per-node", "4", "train.py"])
    b.world_size = 4
    found = {(d.kind, d.name): d for d in record_differences(a, b)}
    assert found[("command", "command")].changes_numerics and found[("command", "world size")].changes_numerics


def test_a_script_run_records_python_script_args(project, store):
    engine = FakeEngine()
    record = go(engine, store, project, engine.add_image("img", torchrun_like), script="train.py", args=["-e", "1"])
    assert record.argv == ["python", "train.py", "-e", "1"] and record.script == "train.py"
    assert record.job_argv == record.argv
    replayed = replay(engine, store, record.run_id, sink=QUIET).record
    assert (replayed.script, replayed.args, replayed.argv) == ("train.py", ["-e", "1"], record.argv)


def test_the_job_has_a_fixed_hostname_that_resolves_without_a_network(project, store):
    """torchrun --standalone looks its hostname up; Docker's random one is unknown in a container with no network."""
    from envkit.engine.docker import create_body

    engine = FakeEngine()
    go(engine, store, project, engine.add_image("img"), script="train.py")
    spec = next(arg for call, arg in engine.calls if call == "create")
    body = create_body(spec)  # what the Docker engine is sent
    assert body["Hostname"] == "envkit-job" and body["HostConfig"]["ExtraHosts"] == ["envkit-job:127.0.0.1"]


def test_an_empty_command_is_refused(project, store):
    engine = FakeEngine()
    with pytest.raises(ScriptNotFoundError, match="no command"):
        go(engine, store, project, engine.add_image("img"), argv=[])


# --- the verdict compares something -----------------------------------------------------------------------------------
def test_a_job_that_only_prints_random_bytes_replays_diverged_naming_the_line(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", lambda ctx: Outcome(0, stdout=b"start\nvalue " + os.urandom(4).hex().encode()
                                                          + b"\n"))
    original = go(engine, store, project, image, script="train.py")
    verdict = replay(engine, store, original.run_id, sink=QUIET).verdict
    assert verdict.kind == "DIVERGED" and verdict.exit == 3 and verdict.stdout_is_output
    assert verdict.stdout_first_line == 2 and verdict.stdout["original"].startswith("value ")
    assert verdict.stdout["original"] != verdict.stdout["replay"]


def test_a_job_that_prints_the_same_is_identical_on_what_it_printed(project, store):
    engine = FakeEngine()
    original = go(engine, store, project, engine.add_image("img", printing(b"accuracy 0.93\n")), script="train.py")
    verdict = replay(engine, store, original.run_id, sink=QUIET).verdict
    assert verdict.kind == "IDENTICAL" and verdict.stdout_is_output and verdict.stdout["lines"] == 1


def test_masked_timing_lines_do_not_decide_and_keep_their_line_numbers(project, store):
    engine = FakeEngine()
    image = engine.add_image("img", lambda ctx: Outcome(0, stdout=f"epoch 1 took {os.urandom(2).hex()}s\n"
                                                                  "loss 0.5\n".encode()))
    original = go(engine, store, project, image, script="train.py")
    assert replay(engine, store, original.run_id, sink=QUIET).verdict.kind == "DIVERGED"
    verdict = replay(engine, store, original.run_id, sink=QUIET, ignore_lines=[r"took \w+s$"]).verdict
    assert verdict.kind == "IDENTICAL" and verdict.stdout["masked"] == 1 and verdict.stdout["lines"] == 1
    assert verdict.ignore_lines == [r"took \w+s$"]


@pytest.mark.parametrize("stdout", [b"", b"took 1s\n"])
def test_nothing_compared_is_never_identical(project, store, stdout):
    engine = FakeEngine()
    original = go(engine, store, project, engine.add_image("img", printing(stdout)), script="train.py")
    verdict = replay(engine, store, original.run_id, sink=QUIET, ignore_lines=["took"]).verdict
    assert verdict.kind == "UNVERIFIED" and verdict.exit == 5


def test_with_output_files_stdout_is_reported_but_does_not_decide(project, store):
    def job(ctx: JobContext) -> Outcome:
        ctx.path("/work/model.bin").write_bytes(b"same")
        return Outcome(0, stdout=os.urandom(4).hex().encode())

    engine = FakeEngine()
    original = go(engine, store, project, engine.add_image("img", job), script="train.py")
    verdict = replay(engine, store, original.run_id, sink=QUIET).verdict
    assert verdict.kind == "IDENTICAL" and verdict.files_compared == 1 and verdict.stdout_differs
    assert not verdict.stdout_is_output


def test_stdout_comparison_reads_bytes_and_quotes_the_lines(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x\n\xff y\nz\n")
    b.write_bytes(b"x\n\xff y\n")
    found = compare_stdout(a, b)
    assert (found.first_line, found.original, found.replay, found.lines) == (3, "z", None, 2)
    assert not compare_stdout(a, a).differs and compare_stdout(a, tmp_path / "missing").first_line == 1


# --- run ids ----------------------------------------------------------------------------------------------------------
def test_run_ids_by_unique_prefix_hex_part_and_last(tmp_path):
    store = FileStore(tmp_path)
    ids = ["20261123T200913164Z-af017140", "20261123T200921501Z-37169ae2", "20261124T100000000Z-af099999"]
    for run_id in ids:
        (store.runs_dir / run_id).mkdir(parents=True)
        (store.runs_dir / run_id / "record.json").write_text("{}")
    assert store.resolve(ids[1]) == ids[1]
    assert store.resolve("20261124") == ids[2] and store.resolve("20261123T2009215") == ids[1]
    assert store.resolve("3716") == ids[1] and store.resolve("af01") == ids[0]
    assert store.resolve("last") == ids[2]
    with pytest.raises(AmbiguousRunIdError, match="matches 2 runs: 20261123T200921501Z-37169ae2, "
                                                  "20261123T200913164Z-af017140"):
        store.resolve("20261123")
    with pytest.raises(RunNotFoundError):
        store.resolve("af0")  # under 4 hex digits: a prefix of the whole id only
    with pytest.raises(RunNotFoundError, match="no run matches '2025'"):
        store.resolve("2025")
    for bad in ("../etc", "latest", "x" * 40, "20261123T200913164Z-AF"):
        with pytest.raises(InvalidRunIdError):
            store.resolve(bad)
    with pytest.raises(RunNotFoundError, match="no runs"):
        FileStore(tmp_path / "empty").resolve("last")


# --- the CLI: exit codes, `--`, the project configuration ---------------------------------------------------------
@pytest.fixture()
def cli(project, tmp_path, monkeypatch):
    """`envkit run` in the project folder, on a fake engine; returns (engine, main)."""
    from envkit import engine as engine_module
    from envkit.cli import main

    engine = FakeEngine()
    monkeypatch.setattr(engine_module, "connect", lambda *a, **k: engine)
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "store"))
    monkeypatch.chdir(project)
    return engine, main


def test_a_jobs_exit_code_34_is_the_jobs_and_envkits_own_failures_are_125_to_127(cli, capsys):
    engine, main = cli
    image = engine.add_image("img", lambda ctx: Outcome(34))
    assert main(["run", "--seed", "1", "--image", image, "--json", "train.py"]) == 34
    assert json.loads(capsys.readouterr().out)["failed_by"] == "job"
    assert main(["run", "--seed", "1", "--image", image, "--json", "nope.py"]) == 125
    out = json.loads(capsys.readouterr().out)
    assert out["failed_by"] == "envkit" and out["error"]["code"] == 30 and out["error"]["type"] == "ScriptNotFoundError"
    assert main(["run", "--seed", "1", "--image", image, "--no-such-option", "train.py"]) == 125
    engine.start_error = 'exec: "nosuch": executable file not found in $PATH'
    assert main(["run", "--seed", "1", "--image", image, "--", "nosuch"]) == 127
    assert "executable file not found" in capsys.readouterr().err


def test_dashdash_starts_a_command_and_after_a_script_belongs_to_its_args(cli):
    engine, main = cli
    image = engine.add_image("img")
    assert main(["run", "--seed", "1", "--image", image, "--", "python", "-m", "pkg.train", "--lr", "1"]) == 0
    assert main(["run", "--seed", "1", "--image", image, "train.py", "--", "--lr", "1"]) == 0
    assert main(["run", "--seed", "1", "--image", image, "--env", "A=--", "train.py"]) == 0
    commands = [arg.command for call, arg in engine.calls if call == "create"]
    assert commands == [["python", "-m", "pkg.train", "--lr", "1"], ["python", "train.py", "--", "--lr", "1"],
                        ["python", "train.py"]]


def test_the_project_configuration_makes_run_need_no_flags(cli, project, monkeypatch):
    engine, main = cli
    monkeypatch.delenv("ENVKIT_HOME")
    image = engine.add_image("img")
    (project / "data").mkdir()
    (project / "data" / "x.txt").write_text("1")
    (project / "big.ckpt").write_text("weights")
    (project / "pyproject.toml").write_text(f'[tool.envkit]\nimage = "{image}"\nseed = 42\nthreads = 2\n'
                                            'mounts = ["data:/data"]\nignore = ["*.ckpt"]\nenv = {MODE = "fast"}\n'
                                            'ignore_lines = ["took"]\n')
    assert main(["run", "train.py"]) == 0
    assert main(["run", "--seed", "7", "--env", "MODE=slow", "--mount", f"{project / 'pkg'}:/data", "train.py"]) == 0
    (project / "pkg" / "deep").mkdir()
    (project / "pkg" / "deep" / "job.py").write_text("")
    os.chdir(project / "pkg" / "deep")  # a subfolder: the configuration and the store are found upward
    assert main(["run", "job.py"]) == 0
    store = FileStore(project / ".envkit")
    first, second, third = [store.read(r["run_id"]) for r in reversed(store.list().rows)]
    assert (first.seed, first.threads, first.environment["MODE"]) == (42, 2, "fast")
    assert [m["target"] for m in first.mounts] == ["/data"] and first.mounts[0]["source"] == str(project / "data")
    assert "big.ckpt" not in [e.path for e in first.code.files] and "train.py" in [e.path for e in first.code.files]
    assert (second.seed, second.environment["MODE"], second.mounts[0]["source"]) == (7, "slow", str(project / "pkg"))
    assert third.seed == 42 and third.script == "job.py"
    assert not (project / "pkg" / "deep" / ".envkit").exists()


def test_no_seed_anywhere_is_a_usage_error(cli, capsys):
    engine, main = cli
    assert main(["run", "--image", engine.add_image("img"), "train.py"]) == 125
    assert "no seed" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "words"), [
    ("seed = -1\n", "seed = -1 is out of range"),
    ("determinism = 'loose'\n", "determinism = 'loose' is not one of"),
    ("env = {ENVKIT_SEED = '1'}\n", "env.ENVKIT_SEED is set by envkit"),
    ("gpus = 'lots'\n", "(from envkit.toml)"),
])
def test_a_bad_configured_value_is_one_line_naming_the_key(cli, project, capsys, text, words):
    engine, main = cli
    (project / "envkit.toml").write_text(f"image = \"{engine.add_image('img')}\"\n" + text)
    assert main(["run", "train.py"]) == 125
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_ignore_lines_from_the_configuration_and_the_command_line(cli, project, capsys, tmp_path):
    engine, main = cli
    image = engine.add_image("img", lambda ctx: Outcome(0, stdout=f"took {os.urandom(2).hex()}\n"
                                                                  f"at {os.urandom(2).hex()}\nok\n".encode()))
    assert main(["run", "--seed", "1", "--image", image, "train.py"]) == 0
    run_id = capsys.readouterr().out.split()[-1]
    (project / "envkit.toml").write_text("ignore_lines = ['^took ']\n")
    assert main(["replay", run_id]) == 3
    out = capsys.readouterr().out
    assert "stdout line 2 differs" in out and "original: at " in out
    assert main(["replay", "--ignore-lines", "^at ", run_id]) == 0
    assert "compared stdout: 1 line, 2 masked" in capsys.readouterr().out
    (project / "envkit.toml").write_text("ignore_lines = ['(']\n")
    assert main(["replay", run_id]) == 17
    assert "is not a regular expression" in capsys.readouterr().err
    (project / "envkit.toml").unlink()
    assert main(["replay", "--ignore-lines", "(", run_id]) == 2


def test_the_python_api_runs_a_command_takes_inputs_and_replays_upstream(cli, project, tmp_path):
    import envkit

    engine, _main = cli

    def job(ctx: JobContext) -> Outcome:
        if ctx.spec.command[:3] == ["python", "-m", "pkg.train"]:
            ctx.path("/work/model.bin").write_bytes(b"weights")
        else:
            ctx.path("/work/score.txt").write_bytes(ctx.path("/work/model.bin").read_bytes()[:3])
        return Outcome(0)

    image = engine.add_image("img", job)
    first = envkit.run(command=["python", "-m", "pkg.train"], seed=1, image=image)
    assert first.ok and first.record.argv == ["python", "-m", "pkg.train"] and first.record.script is None
    second = envkit.run("train.py", seed=1, image=image, inputs=["last:model.bin"])  # a second call works too
    assert [u.run_id for u in second.record.upstream] == [first.id]
    replayed = envkit.replay(second.id[:17], upstream=True)
    assert replayed.verdict == "IDENTICAL" and replayed.of == second.id
    assert envkit.show("last").replay_of == second.id
    with pytest.raises(TypeError):
        envkit.run("train.py", command=["python"], seed=1, image=image)
    with pytest.raises(TypeError, match="seed"):
        envkit.run("train.py", image=image)


def test_a_commands_redacted_argument_is_named_on_replay(project, store):
    engine = FakeEngine()
    original = go(engine, store, project, engine.add_image("img", printing(b"ok\n")),
                  argv=["python", "-m", "pkg.train", "--api-key", "s3cret"])
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert any("arguments that were redacted" in n for n in result.notes)
    assert [arg.command for call, arg in engine.calls if call == "create"][-1][-1] == "<redacted>"
