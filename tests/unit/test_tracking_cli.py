"""Where exports go (flag, environment, project configuration) and how `envkit run` / `envkit replay` carry
``--mlflow``: no tracker needed. Runs go through the real CLI in a subprocess on the in-memory engine
(tests/unit/fakes.py), so that what the process imported can be counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from envkit.cli._options import optional_value_command
from envkit.errors import EXIT_RUN_FAILED, ProjectConfigError, TrackerError
from envkit.tracking.config import looks_like_tracking_uri, preflight, tracking

ROOT = Path(__file__).resolve().parents[2]

# The real `envkit` CLI on the in-memory engine; prints what it returned and imported on its last stderr line.
DRIVER = """
import json, sys
sys.path.insert(0, {root!r})
import envkit.engine
from tests.unit.fakes import FakeEngine, Outcome

def job(ctx):
    (ctx.path("/envkit/output") / "metrics.json").write_text('{{"loss": 0.5}}')
    return Outcome(int(ctx.env.get("EXIT", "0")), stdout=b"trained\\n")

engine = FakeEngine()
image = engine.add_image("img", job)
envkit.engine.connect = lambda *a, **k: engine
from envkit.cli import main
code = main([a.replace("IMAGE", image) for a in sys.argv[1:]])
print(json.dumps({{"code": code, "containers": sum(1 for c, _ in engine.calls if c == "create"),
                  "mlflow": sorted(m for m in sys.modules if m.split(".")[0] == "mlflow")}}), file=sys.stderr)
"""


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    p = tmp_path / "my-project"
    p.mkdir()
    (p / "train.py").write_text("print('the fake engine does not run me')\n")
    monkeypatch.chdir(p)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ENVKIT_HOME", raising=False)
    return p


def envkit(project: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ENVKIT_HOME")} | env
    out = subprocess.run([sys.executable, "-c", DRIVER.format(root=str(ROOT)), *args], cwd=project, env=full_env,
                         capture_output=True, text=True, timeout=300, check=False)
    lines = out.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("{"), out.stderr
    return out, json.loads(lines[-1])


def runs_in(project: Path) -> list[str]:
    runs = project / ".envkit" / "runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


# --- the cost: none without --mlflow ---------------------------------------------------------------------------------
def test_run_and_replay_without_mlflow_never_import_it(project: Path) -> None:
    out, seen = envkit(project, "run", "--seed", "1", "--image", "IMAGE", "--json", "train.py")
    assert seen == {"code": 0, "containers": 1, "mlflow": []}, out.stderr
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert "mlflow" not in summary
    out, seen = envkit(project, "replay", summary["run_id"])
    assert seen["code"] == 0 and seen["mlflow"] == [], out.stderr


# --- refused before the job, never after it --------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "env", "words"), [
    (["--mlflow"], {}, "error: no MLflow tracking URI given"),
    (["--mlflow", "sqlite:///mlflow.db"], {}, "error: 'sqlite:///mlflow.db' is not the URI of an MLflow tracking"),
    (["--mlflow"], {"MLFLOW_TRACKING_URI": "./mlruns"}, "error: './mlruns' is not the URI of an MLflow tracking"),
])
def test_a_bad_tracker_setting_is_refused_before_the_job(project: Path, args: list[str], env: dict[str, str],
                                                         words: str) -> None:
    out, seen = envkit(project, "run", "--seed", "1", "--image", "IMAGE", *args, "train.py", **env)
    # `envkit run`'s own failures exit 125, as docker's do (the job's codes are the job's); TrackingError is 60.
    assert (seen["code"], seen["containers"]) == (EXIT_RUN_FAILED, 0), out.stderr
    assert words in out.stderr and "hint:" in out.stderr
    assert runs_in(project) == []


def test_a_malformed_mlflow_setting_is_a_project_error(project: Path) -> None:
    (project / "envkit.toml").write_text('[mlflow]\ntracking_uri = "http://127.0.0.1:5000"\nexperimant = "x"\n')
    out, seen = envkit(project, "run", "--seed", "1", "--image", "IMAGE", "--mlflow", "train.py")
    assert (seen["code"], seen["containers"]) == (EXIT_RUN_FAILED, 0), out.stderr  # ProjectConfigError (17) in run
    assert "error: envkit.toml: unknown key experimant in mlflow" in out.stderr


def test_replay_with_an_unusable_configured_tracker_warns_and_replays(project: Path) -> None:
    """A URI in the environment makes replays export; one that cannot be used is a warning, not a refusal."""
    out, seen = envkit(project, "run", "--seed", "1", "--image", "IMAGE", "train.py")
    run_id = out.stdout.strip().splitlines()[-1]
    out, seen = envkit(project, "replay", run_id, MLFLOW_TRACKING_URI="mlruns")
    assert (seen["code"], seen["containers"]) == (0, 1), out.stderr
    assert "warning: no MLflow export ('mlruns' is not the URI of an MLflow tracking server; from " \
           "$MLFLOW_TRACKING_URI)" in out.stderr
    assert "IDENTICAL" in out.stdout


# --- --mlflow alone or with its URI ----------------------------------------------------------------------------------
def _parse(args: list[str]) -> list:
    app = typer.Typer()
    seen: list = []

    @app.command(cls=optional_value_command({"--mlflow": looks_like_tracking_uri}),
                 context_settings={"allow_interspersed_args": False})
    def run(script: str, args: list[str] = typer.Argument(None), seed: int = typer.Option(0, "--seed"),
            json_out: bool = typer.Option(False, "--json"), mlflow: str = typer.Option(None, "--mlflow")) -> None:
        seen.extend([script, mlflow, seed, args or []])

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return seen


@pytest.mark.parametrize(("args", "uri", "rest"), [
    (["--seed", "1", "train.py"], None, []),
    (["--mlflow", "--seed", "1", "train.py"], "", []),
    (["--seed", "1", "--mlflow", "train.py", "--lr", "1"], "", ["--lr", "1"]),
    (["--seed", "1", "--mlflow", "http://127.0.0.1:5000", "train.py"], "http://127.0.0.1:5000", []),
    (["--seed", "1", "--mlflow=https://mlflow.example.org", "train.py"], "https://mlflow.example.org", []),
    (["--seed", "1", "--mlflow", "databricks", "train.py"], "databricks", []),
    (["--seed", "1", "--json", "train.py", "--mlflow", "http://x:1"], None, ["--mlflow", "http://x:1"]),  # the job's
])
def test_mlflow_stands_alone_or_takes_a_uri(args: list[str], uri: str | None, rest: list[str]) -> None:
    assert _parse(args) == ["train.py", uri, 1, rest]


# --- where the settings come from ------------------------------------------------------------------------------------
def test_settings_come_from_the_flag_then_the_environment_then_the_project(project: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracking().tracking_uri is None and tracking().experiment == "my-project"
    (project / "pyproject.toml").write_text('[tool.envkit]\nmlflow = "http://127.0.0.1:5001"\n')
    assert (tracking().tracking_uri, tracking().source) == ("http://127.0.0.1:5001", "pyproject.toml [tool.envkit]")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5002")
    assert (tracking().tracking_uri, tracking().source) == ("http://127.0.0.1:5002", "$MLFLOW_TRACKING_URI")
    assert tracking("http://127.0.0.1:5003").tracking_uri == "http://127.0.0.1:5003"
    (project / "pyproject.toml").write_text('[tool.envkit.mlflow]\nexperiment = "resnet"\nartifact_limit = "1K"\n')
    settings = tracking()
    assert (settings.tracking_uri, settings.experiment, settings.artifact_limit) == \
        ("http://127.0.0.1:5002", "resnet", 1024)
    assert tracking(experiment="other", artifact_limit=0).experiment == "other"


@pytest.mark.parametrize(("text", "words"), [
    ("mlflow = 5\n", "mlflow = 5 is not a string or table"),
    ("[mlflow]\nuri = 'http://x'\n", "unknown key uri in mlflow"),
    ("[mlflow]\nexperiment = ''\n", "mlflow.experiment = '' is not a non-empty string"),
    ("[mlflow]\nartifact_limit = 'lots'\n", "mlflow.artifact_limit: 'lots' is not a size"),
    ("[mlflow]\nartifact_limit = -1\n", "must not be negative"),
])
def test_bad_mlflow_settings_are_one_clear_error(project: Path, text: str, words: str) -> None:
    (project / "envkit.toml").write_text(text)
    with pytest.raises(ProjectConfigError, match=words):
        tracking()


def test_preflight_names_what_is_missing(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tracking("http://127.0.0.1:5000")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed
    with pytest.raises(TrackerError, match="needs MLflow's client, which is not installed") as info:
        preflight(settings)
    assert "envkit[mlflow]" in (info.value.hint or "")
