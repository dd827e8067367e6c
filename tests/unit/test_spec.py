from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import SpecError
from envkit.lock.spec import load_spec, parse_spec

GOOD = {"name": "cpu", "python": "3.11", "base": "envkit/base:bookworm-py3.11", "packages": ["numpy==2.4.6"]}


def test_minimal_spec_gets_defaults():
    spec = parse_spec(GOOD)
    assert spec.platform == "x86_64-manylinux_2_28"
    assert spec.arch == "x86_64" and spec.manylinux == (2, 28)
    assert spec.pip_config is True


def test_linux_x86_64_alias():
    assert parse_spec({**GOOD, "platform": "linux/x86_64"}).platform == "x86_64-manylinux_2_28"


@pytest.mark.parametrize(
    "change, words",
    [
        ({"pakages": ["x"]}, "unknown key 'pakages'"),
        ({"python": "3"}, "major.minor"),
        ({"name": "Bad Name"}, "name 'Bad Name'"),
        ({"packages": ["torch>=>1"]}, "not a valid requirement"),
        ({"platform": "win-amd64"}, "not supported"),
        ({"packages": []}, "missing required key packages"),
        ({"env": {"1BAD": "x"}}, "env must map"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(change, words):
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **change})
    assert words in str(err.value)


def test_relative_find_links_are_relative_to_the_spec(tmp_path: Path):
    (tmp_path / "wheels").mkdir()
    p = tmp_path / "envkit.yaml"
    p.write_text("name: t\npython: '3.11'\nbase: b\npackages: [six]\nfind_links: [wheels]\n")
    assert load_spec(p).find_links == (str(tmp_path / "wheels"),)


def test_malformed_yaml_is_one_line_with_position(tmp_path: Path, capsys):
    p = tmp_path / "envkit.yaml"
    p.write_text("name: cpu\npackages: [torch\n")
    rc = main(["lock", str(p)])
    err = capsys.readouterr().err
    assert rc == SpecError.exit_code
    assert "is not valid YAML at line" in err
    assert "Traceback" not in err


def test_missing_spec_file(tmp_path: Path, capsys):
    rc = main(["lock", str(tmp_path / "nope.yaml")])
    assert rc == SpecError.exit_code
    out = capsys.readouterr().err
    assert "not found" in out and "hint:" in out
