"""Secrets never reach a run record: not in the environment, the envkit command line or the script's arguments;
names are matched on their parts (MAX_TOKENS is not a secret), URL passwords are stripped, and a replay says which
variables it cannot restore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envkit.replay import replay, user_environment
from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.store.filestore import FileStore
from envkit.store.record import REDACTED, RunRecord
from envkit.store.redact import SECRET_PARTS, is_secret_name, redact_argv, scrub_value

from .fakes import FakeEngine, JobContext, Outcome

RUN_ID = "20261123T191300123Z-3f9a1c2b"
QUIET = Sink(None, None)

SECRET = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY",
          "AWS_SESSION_TOKEN", "DB_PASSWORD", "MYSQL_PWD", "PGPASSWORD", "SMTP_PASS", "REDIS_PASSWD",
          "GITHUB_PAT", "SENTRY_DSN", "DOCKER_AUTH_CONFIG", "AZURE_CREDENTIALS", "GCP_CREDS", "MY_CRED",
          "PRIVATE_KEY", "SSH_PRIVATE", "hf_token", "api-key", "db.password", "apiKey", "hfToken", "MY_APIKEY",
          "AZURE_STORAGE_CONNECTION_STRING", "SQLCONNECTION_STRING", "NPM_TOKEN", "CI_JOB_TOKEN", "SECRET",
          "SESSION_COOKIE", "JWT", "BEARER", "KEY", "GITHUBTOKEN", "API_KEYS"]
NOT_SECRET = ["TOKENIZERS_PARALLELISM", "MAX_TOKENS", "KEYBOARD", "PATH", "PWD", "OLDPWD", "HOME", "LANG",
              "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTHONHASHSEED", "AUTHOR", "PASSAGE_LEN", "COMPASS",
              "BYPASS_CACHE", "MONKEY", "DATABASE_URL", "HTTPS_PROXY", "NUM_TOKENS",
              "SPATIAL", "PATIENCE", "DSNAME", "lr", "batch-size", "maxTokens", "TOKENIZER_NAME"]


@pytest.mark.parametrize("name", SECRET)
def test_secret_names(name: str):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", NOT_SECRET)
def test_names_that_are_not_secrets(name: str):
    assert not is_secret_name(name)


def test_the_table_is_data():
    assert {"TOKEN", "SECRET", "KEY", "PASSWORD", "PASS", "PWD", "CRED", "AUTH", "DSN", "PAT"} <= SECRET_PARTS


@pytest.mark.parametrize("value, expected", [
    ("http://alice:s3cret@proxy.corp:3128", f"http://alice:{REDACTED}@proxy.corp:3128"),
    ("postgres://u:p@ss@db:5432/x?sslmode=require", f"postgres://u:{REDACTED}@db:5432/x?sslmode=require"),
    ("https://ghp_" + "a1" * 18 + "@github.com/org/repo.git", f"https://{REDACTED}@github.com/org/repo.git"),
    ("ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git"),
    ("https://pypi.org/simple", "https://pypi.org/simple"),
    ("http://host:8080/a@b", "http://host:8080/a@b"),
    ("Server=db;User Id=sa;Password=hunter2;", f"Server=db;User Id=sa;Password={REDACTED};"),
    ("https://x/api?access_token=abc&page=2", f"https://x/api?access_token={REDACTED}&page=2"),
    ("plain text", "plain text"),
])
def test_values_keep_what_is_useful(value: str, expected: str):
    assert scrub_value(value) == expected
    assert scrub_value(expected) == expected  # idempotent: a record read and written again does not change


def test_argv_redaction():
    argv = ["envkit", "run", "--seed", "1", "--env", "HF_TOKEN=abc", "--env=API_KEY=def", "--env", "MAX_TOKENS=5",
            "train.py", "--token", "ghi", "--password=jkl", "--lr=0.1", "--data", "s3://k:mno@bucket/x",
            "DB_PASS=pqr"]
    out = redact_argv(argv)
    assert out == ["envkit", "run", "--seed", "1", "--env", f"HF_TOKEN={REDACTED}", f"--env=API_KEY={REDACTED}",
                   "--env", "MAX_TOKENS=5", "train.py", "--token", REDACTED, f"--password={REDACTED}", "--lr=0.1",
                   "--data", f"s3://k:{REDACTED}@bucket/x", f"DB_PASS={REDACTED}"]
    assert redact_argv(out) == out


def _record(**over) -> RunRecord:
    return RunRecord(run_id=RUN_ID, **over)


def test_a_record_holds_no_secret_anywhere_and_says_so():
    record = _record(
        command=["envkit", "run", "--seed", "1", "--env", "HF_TOKEN=hf_abc123", "train.py", "--api-key", "sk-def"],
        args=["--api-key", "sk-def", "--epochs", "3"],
        environment={"HF_TOKEN": "hf_abc123", "TOKENIZERS_PARALLELISM": "false", "MAX_TOKENS": "512",
                     "HTTPS_PROXY": "http://me:pr0xy@proxy:3128", "DATABASE_URL": "postgres://u:dbpw@h/db"})
    text = json.dumps(record.to_dict())
    for secret in ("hf_abc123", "sk-def", "pr0xy", "dbpw"):
        assert secret not in text
    assert record.environment["TOKENIZERS_PARALLELISM"] == "false" and record.environment["MAX_TOKENS"] == "512"
    assert record.environment["HTTPS_PROXY"] == f"http://me:{REDACTED}@proxy:3128"  # the rest is kept
    assert record.args == ["--api-key", REDACTED, "--epochs", "3"]
    [note] = record.notes
    assert "HF_TOKEN" in note and "HTTPS_PROXY" in note and "DATABASE_URL" in note and "command" in note
    again = RunRecord.from_dict(json.loads(text))
    assert again.notes == record.notes and again.to_dict() == record.to_dict()


def test_a_record_without_secrets_gets_no_note():
    assert _record(command=["envkit", "run", "x.py"], environment={"A": "1"}).notes == []


# --- through the run and replay workflows -----------------------------------------------------------------------------
def echo_env(ctx: JobContext) -> Outcome:
    (ctx.path("/envkit/output") / "env.json").write_text(json.dumps(
        {k: ctx.env.get(k) for k in ("HF_TOKEN", "MAX_TOKENS", "HTTPS_PROXY")}, sort_keys=True))
    return Outcome(0)


def test_run_then_replay(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("pass\n")
    store = FileStore(tmp_path / "store")
    engine = FakeEngine()
    image = engine.add_image("img", echo_env)
    request = RunRequest(script="train.py", seed=1, image=image, project=project, trace="off",
                         env={"HF_TOKEN": "hf_live", "MAX_TOKENS": "64", "HTTPS_PROXY": "http://u:pw9@p:1"},
                         command=["envkit", "run", "--seed", "1", "--env", "HF_TOKEN=hf_live", "train.py"])
    record = run(engine, store, request, sink=QUIET)
    on_disk = store.layout(record.run_id).record.read_text()
    assert "hf_live" not in on_disk and "pw9" not in on_disk and '"MAX_TOKENS": "64"' in on_disk
    assert user_environment(store.read(record.run_id)) == {"MAX_TOKENS": "64"}

    result = replay(engine, store, record.run_id, sink=QUIET)
    [note] = [n for n in result.notes if "cannot restore" in n]
    assert "HF_TOKEN" in note and "HTTPS_PROXY" in note and "MAX_TOKENS" not in note
    assert note in store.read(result.run_id).notes  # in the replay's record too
    replayed = json.loads((store.layout(result.run_id).output / "env.json").read_text())
    assert replayed == {"HF_TOKEN": None, "HTTPS_PROXY": None, "MAX_TOKENS": "64"}
