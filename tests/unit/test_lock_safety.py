"""A lockfile from someone else: it cannot write outside the wheel cache, inject Dockerfile instructions, or end in a
traceback. Each bad lock is sealed again (its content_sha256 recomputed), since anyone can do that."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

from envkit.cli import main
from envkit.errors import LockfileError, SpecError
from envkit.image.builder import build_image
from envkit.image.render import plan_build
from envkit.image.wheels import ensure_wheels
from envkit.lock.model import BaseImage, Lockfile, PinnedPackage, Platform, dump_lockfile, load_lockfile
from envkit.lock.spec import parse_spec
from tests.unit.fakes import FakeEngine

WHEEL = "six-1.17.0-py2.py3-none-any.whl"


def make_lock(**over) -> Lockfile:
    fields = dict(
        name="t", python="3.11", platform=Platform("linux", "x86_64", "x86_64-manylinux_2_28"),
        base=BaseImage(ref="envkit/base:x", digest="sha256:" + "b" * 64, python="3.11.2"),
        requirements=("six",), sources={"index_url": [], "indexes": [], "find_links": []},
        environment={"PYTHONHASHSEED": "0"},
        packages=(PinnedPackage("six", "1.17.0", WHEEL, "https://example.invalid/" + WHEEL, "a" * 64),),
        generated_by="envkit test",
    )
    fields.update(over)
    return Lockfile(**fields)


def sealed_yaml(data: dict) -> str:
    """``data`` (a lock's dict) with its content hash recomputed as an attacker would."""
    import json

    from envkit.lock.model import NOT_HASHED

    body = {k: v for k, v in data.items() if k not in NOT_HASHED}
    try:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except TypeError:  # keys that are not strings: refused before the hash is looked at
        canonical = ""
    return yaml.safe_dump({**data, "content_sha256": hashlib.sha256(canonical.encode()).hexdigest()},
                          sort_keys=False)


def lock_dict(**over) -> dict:
    return yaml.safe_load(dump_lockfile(make_lock(**over)))


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for folders), to prove nothing was written."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = None
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[p] = Path(p).read_bytes() if not os.path.islink(p) else os.readlink(p).encode()
    return out


# --- finding 1: a lockfile writes a file anywhere --------------------------------------------------------------------
def _pth_attack(tmp_path: Path) -> tuple[dict, Path, Path]:
    """The issue's lock: a 'wheel' named ../../../<home>/.local/.../zz.pth with its true sha256."""
    home = tmp_path / "home"
    target = home / ".local/lib/python3.11/site-packages/zz.pth"
    payload = tmp_path / "src" / "zz.pth"
    payload.parent.mkdir(parents=True)
    payload.write_bytes(b"import os; os.system('echo owned')\n")
    name = "../" * 40 + str(target).lstrip("/")
    sha = hashlib.sha256(payload.read_bytes()).hexdigest()
    data = lock_dict()
    data["packages"][0].update(filename=name, url=payload.as_uri(), sha256=sha)
    return data, target, payload


def test_wheel_filename_with_a_path_is_refused_on_load(tmp_path: Path):
    data, _, _ = _pth_attack(tmp_path)
    path = tmp_path / "evil.lock.yaml"
    path.write_text(sealed_yaml(data))
    with pytest.raises(LockfileError, match="not a valid wheel file name"):
        load_lockfile(path)


def test_envkit_build_refuses_the_pth_lock_and_writes_nothing(tmp_path: Path, monkeypatch, capsys):
    data, target, _ = _pth_attack(tmp_path)
    path = tmp_path / "evil.lock.yaml"
    path.write_text(sealed_yaml(data))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    rc = main(["build", str(path)])
    err = capsys.readouterr().err
    assert rc == LockfileError.exit_code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # error: and hint:
    assert not target.exists() and tree(tmp_path) == before


def test_cache_path_outside_the_cache_is_refused_even_past_the_parser(tmp_path: Path, monkeypatch):
    """Defence in depth: a PinnedPackage built in code (no parser) still cannot leave the cache."""
    data, target, payload = _pth_attack(tmp_path)
    pkg = PinnedPackage(**{**data["packages"][0], "name": "six", "version": "1.17.0"})
    monkeypatch.setenv("ENVKIT_CACHE", str(tmp_path / "cache"))
    engine = FakeEngine()
    lock = make_lock(packages=(pkg,), base=BaseImage("base", engine.add_image("base"), "3.11.2")).sealed()
    with pytest.raises(LockfileError):  # the render's check of the lock's values
        build_image(engine, lock)
    assert not target.exists()
    from envkit.lock.localsources import LocalSources

    with pytest.raises(LockfileError, match="outside the wheel cache"):  # and the cache's own
        ensure_wheels((pkg,), tmp_path / "cache", sources=LocalSources(allow_any=True))
    assert not target.exists() and not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))


@pytest.mark.parametrize("filename, words", [
    (".six-1.17.0-py2.py3-none-any.whl", "not a valid wheel file name"),
    ("six-1.17.0-py2.py3-none-any.whl\n", "not a valid wheel file name"),
    ("sub\\six-1.17.0-py2.py3-none-any.whl", "not a valid wheel file name"),
    ("six-1.17.0-py2.py3-none-any.whl\0", "not a valid wheel file name"),
    ("six-1.17.0.tar.gz", "not a valid wheel file name"),
    ("numpy-1.17.0-py2.py3-none-any.whl", "is for numpy, not six"),
    ("six-1.16.0-py2.py3-none-any.whl", "is version 1.16.0, not 1.17.0"),
])
def test_filename_must_be_this_packages_bare_wheel(tmp_path: Path, filename: str, words: str):
    data = lock_dict()
    data["packages"][0]["filename"] = filename
    path = tmp_path / "x.lock.yaml"
    path.write_text(sealed_yaml(data))
    with pytest.raises(LockfileError) as err:
        load_lockfile(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_name_and_version_spellings_that_agree_are_accepted():
    lock = make_lock(packages=(
        PinnedPackage("typing-extensions", "4.15.0", "typing_extensions-4.15.0-py3-none-any.whl",
                      "https://x.invalid/t.whl", "c" * 64),
        PinnedPackage("torch", "2.13.0+cpu", "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
                      "https://x.invalid/torch.whl", "d" * 64)))
    from envkit.lock.model import parse_lockfile

    assert parse_lockfile(yaml.safe_load(dump_lockfile(lock))).packages == lock.packages


@pytest.mark.parametrize("ref", ["cpu", "cuda"])
def test_the_reference_locks_still_load(ref: str):
    load_lockfile(Path(__file__).resolve().parents[2] / "lockfiles" / f"{ref}.lock.yaml")


# --- low: wrong types, validation gaps, Dockerfile injection ------------------------------------------------------
def _mutations():
    def set_(path, value):
        def apply(d):
            node = d
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        return apply

    return [
        ("sources-list", set_(["sources"], ["a"]), "sources must be a mapping"),
        ("digest-null", set_(["base", "digest"], None), "needs its image ID (base.digest)"),
        ("packages-int", set_(["packages"], 5), "packages must be a list"),
        ("package-str", set_(["packages"], ["six"]), "packages[0] is not a mapping"),
        ("requirements-map", set_(["requirements"], {"a": 1}), "requirements must be a list"),
        ("env-nested", set_(["environment", "X"], {"a": [1]}), "environment value of 'X' must be a string"),
        ("env-int-key", set_(["environment"], {1: "x"}), "environment keys must be strings"),
        ("version-bool", set_(["schema_version"], True), "unknown lockfile schema_version"),
        ("python-float", set_(["python"], 3.1), 'quote it ("3.10")'),
        ("sha-newline", set_(["packages", 0, "sha256"], "a" * 64 + "\n"), "sha256 "),
        ("digest-newline", set_(["base", "digest"], "sha256:" + "b" * 64 + "\nRUN touch /pwned"),
         "is not sha256:<64 hex>"),
        ("name-newline", set_(["name"], "t\nRUN touch /pwned"), "lock name"),
        ("env-key-newline", set_(["environment"], {"A\nRUN touch /pwned": "1"}), "environment variable name"),
        ("env-value-newline", set_(["environment", "PYTHONHASHSEED"], "0\nRUN touch /pwned"), "control character"),
        ("version-newline", set_(["packages", 0, "version"], "1.17.0\n"), "version"),
        ("ref-newline", set_(["base", "ref"], "envkit/base:x\nRUN x"), "base.ref"),
        ("url-scheme", set_(["packages", 0, "url"], "ftp://x/" + WHEEL), "url"),
        ("non-str-key", set_([7], "x"), "keys must be strings"),
    ]


@pytest.mark.parametrize("name, mutate, words", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_values_give_one_error_line(tmp_path: Path, capsys, name, mutate, words):
    data = lock_dict()
    mutate(data)
    path = tmp_path / "x.lock.yaml"
    path.write_text(sealed_yaml(data))
    with pytest.raises(LockfileError) as err:
        load_lockfile(path)
    assert words in str(err.value) and "\n" not in str(err.value)
    rc = main(["build", str(path), "--dry-run"])
    out, errtext = capsys.readouterr()
    assert rc == LockfileError.exit_code and "Traceback" not in errtext and "RUN touch" not in out


def test_unquoted_python_version_has_a_hint(tmp_path: Path):
    data = lock_dict()
    text = sealed_yaml(data).replace("python: '3.11'", "python: 3.10")
    path = tmp_path / "x.lock.yaml"
    path.write_text(text)
    with pytest.raises(LockfileError) as err:
        load_lockfile(path)
    assert "3.1" in str(err.value) and "quote" in str(err.value)


def test_deeply_nested_yaml_is_one_error(tmp_path: Path):
    path = tmp_path / "deep.lock.yaml"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LockfileError, match="nested too deeply"):
        load_lockfile(path)


def test_render_refuses_values_that_would_add_instructions():
    """The parser refuses these; render checks again for a Lockfile made in code."""
    for lock in (make_lock(name="t\nRUN touch /pwned"),
                 make_lock(environment={"A\nRUN touch /pwned": "1"}),
                 make_lock(environment={"A": "1\nRUN touch /pwned"}),
                 make_lock(base=BaseImage("envkit/base:x\nRUN x", "sha256:" + "b" * 64, "3.11.2"))):
        with pytest.raises(LockfileError):
            plan_build(lock.sealed())


def test_values_reach_the_image_config_as_data():
    """envkit writes the image config as JSON: a dollar, quotes or a backslash are the variable's exact value."""
    plan = plan_build(make_lock(environment={"A": 'say "hi" to $HOME\\x'}).sealed())
    assert plan.env["A"] == 'say "hi" to $HOME\\x'


# --- the spec: same gaps ----------------------------------------------------------------------------------------------
GOOD_SPEC = {"name": "cpu", "python": "3.11", "base": "envkit/base:bookworm-py3.11", "packages": ["numpy==2.4.6"]}


@pytest.mark.parametrize("change, words", [
    ({"python": 3.1}, 'quote it ("3.10")'),
    ({"name": "cpu\n"}, "name"),
    ({"python": "3.11\n"}, "major.minor"),
    ({"platform": "x86_64-manylinux_2_28\n"}, "not supported"),
    ({"env": {"A": {"nested": 1}}}, "env must map"),
    ({"index_url": ["a"]}, "index_url must be a string"),
    ({"env": {"A": "1\nRUN touch /x"}}, "control character"),
])
def test_spec_gaps(change, words):
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD_SPEC, **change})
    assert words in str(err.value) and "\n" not in str(err.value)
