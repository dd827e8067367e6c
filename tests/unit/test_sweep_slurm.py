"""The Slurm backend's pure parts: the batch script (run by a real bash, as Slurm would), errors without Slurm."""

import json
import os
import subprocess
import sys

import pytest

from envkit.errors import SlurmError
from envkit.sweep import slurm
from envkit.sweep.slurm import SlurmOptions, cancel, counts, render_script, slurm_context, submit_array

HOSTILE = ["a b", "$(touch pwned)", "it's", 'say "hi"', "line\nbreak", "*", "--flag"]


def run_task(script_path, index, tmp_path, **env):
    full = {"PATH": os.environ["PATH"], "SLURM_ARRAY_TASK_ID": str(index), "SLURM_JOB_ID": "105",
            "SLURM_ARRAY_JOB_ID": "100", "SLURMD_NODENAME": "node7", **env}
    return subprocess.run(["bash", str(script_path)], env=full, capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)


def test_each_task_runs_its_own_command_with_its_arguments_intact(tmp_path):
    echo = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    script = tmp_path / "array.sh"
    script.write_text(render_script([echo + HOSTILE, echo + ["second"], "exit 7"], tmp_path))
    first = run_task(script, 0, tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == HOSTILE
    assert not (tmp_path / "pwned").exists()
    assert json.loads(run_task(script, 1, tmp_path).stdout) == ["second"]
    assert run_task(script, 2, tmp_path).returncode == 7
    assert (tmp_path / "task-0.exit").read_text() == "0\n"
    assert (tmp_path / "task-2.exit").read_text() == "7\n"
    start = json.loads((tmp_path / "task-1.start").read_text())
    assert {k: start[k] for k in ("job_id", "array_job_id", "node")} == {
        "job_id": "105", "array_job_id": "100", "node": "node7"}
    assert not list(tmp_path.glob("*.tmp.*"))  # markers are renamed into place


def test_a_task_index_without_a_command_fails_and_outside_slurm_the_script_refuses(tmp_path):
    script = tmp_path / "array.sh"
    script.write_text(render_script(["true"], tmp_path))
    missing = run_task(script, 5, tmp_path)
    assert missing.returncode == 2 and "no command for array task 5" in missing.stderr
    outside = subprocess.run(["bash", str(script)], env={"PATH": os.environ["PATH"]}, capture_output=True,
                             text=True, timeout=60)
    assert outside.returncode != 0 and "runs as a Slurm array task" in outside.stderr


def test_sigterm_reaches_the_command_and_is_marked(tmp_path):
    script = tmp_path / "array.sh"
    script.write_text(render_script([["sleep", "60"]], tmp_path))
    env = {"PATH": os.environ["PATH"], "SLURM_ARRAY_TASK_ID": "0"}
    proc = subprocess.Popen(["bash", str(script)], env=env)
    try:
        for _ in range(100):  # until the task has started (its start marker), at most 10 s
            if (tmp_path / "task-0.start").exists():
                break
            subprocess.run(["sleep", "0.1"])
        proc.terminate()  # what scancel sends first
        assert proc.wait(timeout=20) == 143
    finally:
        proc.kill()
    assert (tmp_path / "task-0.exit").read_text() == "143\n"
    assert (tmp_path / "task-0.signal").read_text() == "TERM\n"


def test_without_slurm_tools_the_error_says_how_to_check(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, squeue, sinfo here
    with pytest.raises(SlurmError) as err:
        submit_array([["true"]], tmp_path / "out")
    assert err.value.message == "Slurm's `sbatch` is not installed here"
    assert "sinfo" in err.value.hint
    with pytest.raises(SlurmError, match="`sinfo` is not installed"):
        slurm.idle_nodes()


@pytest.mark.parametrize("call, words", [
    (lambda p: submit_array([], p), "no tasks"),
    (lambda p: submit_array(["true"], p, SlurmOptions(parallel=0)), "parallelism 0"),
    (lambda p: cancel("12; rm -rf /"), "is not a Slurm job id"),
])
def test_bad_arguments(tmp_path, call, words):
    with pytest.raises(SlurmError) as err:
        call(tmp_path)
    assert words in err.value.message


def test_sbatch_messages_lose_their_prefixes():
    text = ("sbatch: error: invalid partition specified: nope\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert slurm._message(text) == ("invalid partition specified: nope; "
                                    "Batch job submission failed: Invalid partition name specified")


def test_slurm_context_and_counts():
    env = {"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2", "SLURMD_NODENAME": "n1",
           "HOME": "/root"}
    assert slurm_context(env) == {k: v for k, v in env.items() if k != "HOME"}
    assert slurm_context({"HOME": "/root"}) is None
    tasks = [slurm.TaskStatus(0, "COMPLETED"), slurm.TaskStatus(1, "RUNNING"), slurm.TaskStatus(2, "COMPLETED")]
    assert counts(tasks) == {"COMPLETED": 2, "RUNNING": 1}
    assert [t.finished for t in tasks] == [True, False, True]
