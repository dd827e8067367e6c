"""random, numpy, unseeded generators, subprocesses, fork and spawn children, levels, hash seed, bad input."""

from __future__ import annotations

import json

SOURCE_KEYS = ("random", "Random()", "np.legacy", "default_rng()", "hash", "random.seed()", "subprocess", "fork",
               "spawn")


def test_every_source_repeats_with_its_seed_and_changes_with_another(runner):
    a, b, c = runner.three("sources.py")
    for key in SOURCE_KEYS:
        assert a.data[key] == b.data[key], key
        assert a.data[key] != c.data[key], key
    # Two unseeded generators in one process are different generators, not one repeated.
    assert len(set(a.data["Random()"])) == 2 and len(set(a.data["default_rng()"])) == 2
    # A fork child gets a random seed of its own (as Python intends), yet the same one every run.
    assert a.data["fork"][0] != a.data["random"][0]
    # tempfile keeps drawing its names from entropy: deterministic names would collide between processes.
    assert a.data["tempfile"] != b.data["tempfile"]


def test_each_process_leaves_a_report(runner):
    job = runner.three("sources.py")[0]
    reports = {r["role"]: r for r in job.reports}
    # The fork child left through os._exit: its report was written when it started, not at exit.
    assert {"main", "subprocess", "spawn child", "fork child"} <= set(reports)
    main = reports["main"]
    assert main["seed"] == main["process_seed"] == 11
    assert main["determinism"] == "strict" and main["hashseed_ok"] is True and main["warnings"] == []
    assert set(main["libraries"]) == {"random", "numpy"}
    assert main["derived_counts"]["random.Random"] >= 2
    assert main["thread_env"]["OMP_NUM_THREADS"] == "1"
    assert reports["fork child"]["ppid"] == main["pid"]


LEVELS = ("import json, random, numpy as np; "
          "print(json.dumps([random.random(), random.Random().random(), np.random.default_rng().random()]))")


def test_levels_seed_and_off(runner):
    specs = [([str(runner.python), "-c", LEVELS], runner.env(3, determinism=level))
             for level in ("seed", "seed", "off", "off")]
    seed1, seed2, off1, off2 = runner.run_many(specs)
    assert seed1.data[0] == seed2.data[0]  # seed: the global generator is seeded
    assert seed1.data[1:] != seed2.data[1:]  # ... but unseeded generators are left alone (strict derives them)
    assert off1.data[0] != off2.data[0]  # off: nothing seeded
    assert [r["determinism"] for r in off1.reports] == ["off"]
    assert off1.reports[0]["libraries"] == {}


def test_hashseed_mismatch_is_reported(runner):
    code = "print('{}')"
    specs = [([str(runner.python), "-c", code], dict(runner.env(7), PYTHONHASHSEED=value)) for value in ("0", "7")]
    unset = runner.env(7)
    del unset["PYTHONHASHSEED"]
    specs.append(([str(runner.python), "-c", code], unset))
    wrong, right, missing = runner.run_many(specs)
    assert wrong.returncode == 0
    lines = wrong.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("envkit: warning: PYTHONHASHSEED in effect is '0'"), lines
    report = wrong.reports[0]
    assert report["hashseed"] == "0" and report["hashseed_ok"] is False and len(report["warnings"]) == 1
    assert right.stderr == "" and right.reports[0]["hashseed_ok"] is True
    assert missing.reports[0]["hashseed"] == "random" and missing.reports[0]["hashseed_ok"] is False


def test_bad_values_give_one_line_and_exit_2(runner):
    cases = {"ENVKIT_SEED": "abc", "ENVKIT_DETERMINISM": "strictest", "ENVKIT_THREADS": "0"}
    specs = [([str(runner.python), "-c", "print('ran')"], dict(runner.env(1), **{name: value}))
             for name, value in cases.items()]
    specs.append(([str(runner.python), "-c", "print('ran')"], dict(runner.env(1), ENVKIT_SEED=str(2**32))))
    for job, bad in zip(runner.run_many(specs), [*cases.values(), str(2**32)]):
        assert job.returncode == 2 and job.stdout == ""
        lines = job.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("envkit: error: ") and repr(bad) in lines[0], lines


def test_a_job_without_numpy_or_torch_never_loads_them(runner):
    code = "import sys, json; print(json.dumps(['numpy' in sys.modules, 'torch' in sys.modules]))"
    (job,) = runner.run_many([([str(runner.python), "-c", code], runner.env(5))])
    assert job.data == [False, False]
    assert job.reports[0]["role"] == "main"


def test_thread_variables_are_pinned_unless_the_job_set_them(runner):
    code = "import os, json; print(json.dumps([os.environ.get(v) for v in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')]))"
    argv = [str(runner.python), "-c", code]
    three, preset = runner.run_many([(argv, runner.env(5, ENVKIT_THREADS="3")),
                                     (argv, runner.env(5, OMP_NUM_THREADS="4"))])
    assert three.data == ["3", "3"] and three.reports[0]["threads"] == 3
    assert preset.data == ["4", "1"]
    assert any("OMP_NUM_THREADS=4" in w for w in preset.reports[0]["warnings"])
    assert json.loads(json.dumps(preset.reports[0])) == preset.reports[0]
