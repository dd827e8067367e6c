"""Hostile input, generated: the spec, lockfile and run-record parsers on structures and YAML no one should write.

The invariant for every input: the parser returns a value, or raises an :class:`envkit.errors.EnvkitError`
subclass whose message is one line; never another exception (a traceback for the user). And nothing is written
outside the sandbox's input file: HOME, the envkit cache and the current folder are snapshotted around each call.

Inputs are valid documents mutated (a value replaced by a hostile one, a key dropped or added, the lock's content
hash recomputed as an attacker would) and free-form structures and YAML text. Bounded and derandomized
(``derandomize=True``, no example database) so CI sees the same examples every run, in a few seconds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from envkit.cli import main
from envkit.errors import EnvkitError, LockfileError
from envkit.lock.model import dump_lockfile, load_lockfile, parse_lockfile
from envkit.lock.spec import load_spec, parse_spec
from envkit.manifest import ManifestEntry
from envkit.store.record import ImageInfo, LockInfo, RunRecord, Timings

REPO = Path(__file__).resolve().parents[2]
BOUNDED = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

NASTY = [
    "../../../root/.local/lib/python3.11/site-packages/zz.pth", "x-1.0-py3-none-any.whl/../../a", ".hidden.whl",
    "a\nRUN touch /pwned", "\x1b[2J", "\x00", "a" * 64 + "\n", "sha256:" + "a" * 64, "sha256:" + "a" * 64 + "\n",
    "file:///dev/zero", "file:///etc/passwd", "ftp://x/y", "http://u:pw@h/x.whl", "3.10", "3.1", "", " ", "\u202e",
    "C:\\x", "$HOME", "${PATH}", "\"", "'", "<redacted>", "x" * 5000, 3.1, 3.10, 1e308, float("nan"), float("inf"),
    -1, 0, 2**70, True, False, None, [], {}, [None], {"a": None}, {1: 2}, {"": ""},
]
_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40),
                    st.sampled_from(NASTY))
VALUES = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=4)),
    max_leaves=12)
YAML_TEXT = st.text(alphabet=st.sampled_from(list("[]{}:,-'\"!&*#|>?%@`\n\t abcz01.\\/=")), max_size=300)


def _deep(n: int) -> Any:
    value: Any = "x"
    for _ in range(n):
        value = [value]
    return value


# Nested deeper than the interpreter's recursion limit: as parsed YAML or JSON would be after a raised limit, or a
# structure built in code. (Not hypothesis examples: it cannot print such values when reporting.)
DEEP_CASES = [
    ("lock", lambda: parse_lockfile(_deep(5000))),
    ("lock-name", lambda: parse_lockfile(reseal({**LOCK, "name": _deep(5000)}))),
    ("lock-env", lambda: parse_lockfile(reseal({**LOCK, "environment": {"A": _deep(5000)}}))),
    ("spec-env", lambda: parse_spec({**SPEC, "env": {"A": _deep(5000)}})),
    ("spec-name", lambda: parse_spec({**SPEC, "name": _deep(5000)})),
    ("record-run-id", lambda: RunRecord.from_dict({**RECORD, "run_id": _deep(5000)})),
    ("record-seed", lambda: RunRecord.from_dict({**RECORD, "seed": _deep(5000)})),
    ("record-env", lambda: RunRecord.from_dict({**RECORD, "environment": {"k": _deep(5000)}})),
    ("record-outputs", lambda: RunRecord.from_dict({**RECORD, "outputs": [_deep(5000)]})),
]


# --- the sandbox: nothing written outside it --------------------------------------------------------------------
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    for sub in ("home", "cache", "cwd"):
        (root / sub).mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(root / "home"))
        mp.setenv("ENVKIT_CACHE", str(root / "cache"))
        mp.setenv("ENVKIT_HOME", str(root / "home" / "store"))
        mp.delenv("ENVKIT_ALLOW_FILE_URLS", raising=False)
        mp.chdir(root / "cwd")
        yield root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st_.st_size, st_.st_mtime_ns)
    return out


def check(sandbox: Path, call) -> Any:
    """Run ``call``: a value or a one-line EnvkitError, and no write anywhere in the sandbox."""
    before = tree(sandbox)
    try:
        return call()
    except EnvkitError as exc:
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        assert exc.hint is None or "\n" not in exc.hint
        return exc
    finally:
        assert tree(sandbox) == before, "a parser wrote a file"


# --- mutation of a valid document ------------------------------------------------------------------------------
@st.composite
def mutated(draw, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with one to three changes at random depths: replace a value, drop a key or item, add a key."""
    data = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        parent: Any = None
        key: Any = None
        node: Any = data
        while isinstance(node, (dict, list)) and node and (parent is None or draw(st.booleans())):
            parent = node
            key = draw(st.sampled_from(sorted(node, key=repr))) if isinstance(node, dict) \
                else draw(st.integers(0, len(node) - 1))
            node = node[key]
        if parent is None:
            continue
        action = draw(st.sampled_from(["replace", "replace", "drop", "add"]))
        # Copies: a drawn value may be a shared constant (NASTY's [] or {}), and a later step may change it in place.
        if action == "replace":
            parent[key] = copy.deepcopy(draw(VALUES))
        elif action == "drop":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=10), st.integers()))] = copy.deepcopy(draw(VALUES))
        else:
            parent.append(copy.deepcopy(draw(VALUES)))
    return data


def reseal(data: Any) -> Any:
    """Recompute a lock dict's content hash, as anyone can; data that cannot be hashed is left as is."""
    if not isinstance(data, dict):
        return data
    body = {k: v for k, v in data.items() if k not in ("content_sha256", "images", "image_parts")}
    try:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        return data
    return {**data, "content_sha256": hashlib.sha256(canonical.encode()).hexdigest()}


LOCK = yaml.safe_load((REPO / "lockfiles" / "cpu.lock.yaml").read_text())
SPEC = {"name": "cpu", "python": "3.11", "base": "envkit/base:bookworm-py3.11", "platform": "x86_64-manylinux_2_28",
        "packages": ["torch==2.13.0", "numpy==2.4.6"], "find_links": ["./wheels"], "indexes": [], "index_url": None,
        "pip_config": True, "env": {"A": "1"}}
RECORD = RunRecord(
    run_id="20261123T191300123Z-3f9a1c2b", status="succeeded", command=["envkit", "run", "--seed", "1", "t.py"],
    script="t.py", args=["--lr", "0.1"], seed=1, environment={"A": "1", "HF_TOKEN": "x"},
    image=ImageInfo(id="sha256:" + "a" * 64, digests=["r/x@sha256:" + "b" * 64], ref="r/x:1"),
    lock=LockInfo(path="l.yaml", sha256="c" * 64, name="cpu"), inputs=[ManifestEntry("/data/a", 1, "d" * 64)],
    outputs=[ManifestEntry("m.bin", 2, "e" * 64, link=None)], exit_code=0, timings=Timings(1.0, 2.0, 3.0),
    bootstrap=[{"pid": 1}], notes=["n"], mounts=[{"source": "/d", "target": "/data"}], verdict={"kind": "IDENTICAL"},
).to_dict()


# --- the lockfile -------------------------------------------------------------------------------------------------
@BOUNDED
@given(data=st.one_of(mutated(LOCK).map(reseal), mutated(LOCK), VALUES))
@example(data=reseal({**LOCK, "packages": [{**LOCK["packages"][0], "filename": NASTY[0]}]}))
@example(data=reseal({**LOCK, "sources": ["a"]}))
@example(data=reseal({**LOCK, "packages": 5}))
@example(data=reseal({**LOCK, "base": {**LOCK["base"], "digest": None}}))
def test_lock_structures(sandbox, data):
    result = check(sandbox, lambda: parse_lockfile(data, source="x.lock.yaml"))
    if not isinstance(result, EnvkitError):  # accepted: it must render without writing or raising
        from envkit.image.render import plan_build

        check(sandbox, lambda: plan_build(result))


@settings(BOUNDED, max_examples=50)  # YAML in pure Python: a lock's text takes ~30 ms to read
@given(text=st.one_of(YAML_TEXT, mutated(LOCK).map(reseal).map(lambda d: yaml.safe_dump(d, sort_keys=False))))
@example(text="[" * 3000 + "]" * 3000)  # past the recursion limit
@example(text="a: &a [" + "*a, " * 50 + "]\nb: &b [" + "*a, " * 50 + "]\nc: [" + "*b, " * 50 + "]\n")
@example(text="python: 3.10\n")
@example(text="\ufeff\x00\x1b")
def test_lock_yaml(sandbox, text):
    path = sandbox / "cwd" / "in.lock.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(sandbox, lambda: load_lockfile(path))


@settings(BOUNDED, max_examples=30)
@given(text=mutated(LOCK).map(reseal).map(lambda d: yaml.safe_dump(d, sort_keys=False)))
def test_envkit_build_dry_run_never_tracebacks(sandbox, capsys, text):
    path = sandbox / "cwd" / "cli.lock.yaml"
    path.write_text(text)
    rc = check(sandbox, lambda: main(["build", str(path), "--dry-run"]))
    out, err = capsys.readouterr()
    assert rc in (0, LockfileError.exit_code) and "Traceback" not in err
    if rc == 0:  # a lock that passed cannot have put a line of its own into the plan
        assert not [line for line in out.splitlines() if line.startswith(("RUN touch", "ADD", "USER", "VOLUME"))]


def test_the_reference_locks_pass_unchanged(sandbox):
    for name in ("cpu", "cuda"):
        assert check(sandbox, lambda: load_lockfile(REPO / "lockfiles" / f"{name}.lock.yaml")).name == name
    assert parse_lockfile(yaml.safe_load(dump_lockfile(parse_lockfile(LOCK)))) == parse_lockfile(LOCK)


# --- the spec -----------------------------------------------------------------------------------------------------
@BOUNDED
@given(data=st.one_of(mutated(SPEC), VALUES))
@example(data={**SPEC, "python": 3.1})
@example(data={**SPEC, "name": "cpu\n"})
def test_spec_structures(sandbox, data):
    check(sandbox, lambda: parse_spec(data, source="envkit.yaml"))


@settings(BOUNDED, max_examples=50)
@given(text=st.one_of(YAML_TEXT, mutated(SPEC).map(lambda d: yaml.safe_dump(d, sort_keys=False))))
@example(text="name: [&a x, *a, *a]\npython: !!python/object:os.system echo\n")
def test_spec_yaml(sandbox, text):
    path = sandbox / "cwd" / "envkit.yaml"
    path.write_text(text)
    check(sandbox, lambda: load_spec(path))


# --- the run record -----------------------------------------------------------------------------------------------
@BOUNDED
@given(data=st.one_of(mutated(RECORD), VALUES))
@example(data={**RECORD, "run_id": "x\n\x1b[2J"})
@example(data={**RECORD, "notes": ["a"], "\nnew": 1})
def test_record_structures(sandbox, data):
    result = check(sandbox, lambda: RunRecord.from_dict(data))
    if isinstance(result, RunRecord) and _json_clean(data):  # accepted: it writes as JSON and reads back the same
        again = RunRecord.from_dict(json.loads(json.dumps(result.to_dict())))
        assert again.to_dict() == result.to_dict()


def _json_clean(data: Any) -> bool:
    """Whether ``data`` is what a JSON file can hold (string keys, no NaN), so a JSON round trip keeps it."""
    try:
        return json.loads(json.dumps(data, allow_nan=False)) == data
    except (TypeError, ValueError, RecursionError):
        return False


@pytest.mark.parametrize("name, call", DEEP_CASES, ids=[c[0] for c in DEEP_CASES])
def test_deeply_nested_structures(sandbox, name, call):
    assert isinstance(check(sandbox, call), EnvkitError)
