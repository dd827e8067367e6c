"""Resolution for a TARGET platform with uv, offline against a local folder of real wheels."""

import hashlib
import zipfile
from pathlib import Path

import pytest

from envkit.errors import ResolveError
from envkit.lock.pipconfig import parse_pip_config_list
from envkit.lock.resolver import Sources, Target, UvResolver, select_wheel, target_tags


def make_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any", requires: tuple[str, ...] = ()) -> Path:
    """A minimal but valid wheel (pip and uv accept it)."""
    fname = f"{name}-{version}-{tag}.whl"
    dist = f"{name}-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    wheel = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n"
    with zipfile.ZipFile(folder / fname, "w") as z:
        z.writestr(f"{name}/__init__.py", f"VERSION = {version!r}\n")
        z.writestr(f"{dist}/METADATA", meta)
        z.writestr(f"{dist}/WHEEL", wheel)
        z.writestr(f"{dist}/RECORD", "")
    return folder / fname


@pytest.fixture
def local_index(tmp_path: Path) -> Sources:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "alpha", "1.0", requires=("beta>=2",))
    make_wheel(wheels, "beta", "2.0")
    make_wheel(wheels, "beta", "2.1")
    empty = tmp_path / "simple"
    empty.mkdir()
    return Sources(index_url=empty.as_uri(), find_links=(str(wheels),))


def test_resolves_transitive_pins_with_hashes(local_index: Sources):
    pins = UvResolver().resolve(["alpha"], Target("3.11", "x86_64-manylinux_2_28"), local_index)
    by_name = {p.name: p for p in pins}
    assert set(by_name) == {"alpha", "beta"}
    assert by_name["beta"].version == "2.1"
    wheel = Path(local_index.find_links[0]) / by_name["beta"].filename
    assert by_name["beta"].sha256 == hashlib.sha256(wheel.read_bytes()).hexdigest()


def test_unresolvable_requirement_is_named(local_index: Sources):
    with pytest.raises(ResolveError) as err:
        UvResolver().resolve(["gamma-does-not-exist"], Target("3.11", "x86_64-manylinux_2_28"), local_index)
    assert "gamma-does-not-exist" in str(err.value)


def test_wheel_choice_follows_the_target_not_the_host():
    wheels = [
        {"url": "f/numpy-2.4.6-cp311-cp311-macosx_14_0_arm64.whl", "hashes": {"sha256": "1"}},
        {"url": "f/numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", "hashes": {"sha256": "2"}},
        {"url": "f/numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "hashes": {"sha256": "3"}},
        {"url": "f/numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl", "hashes": {"sha256": "4"}},
    ]
    x86 = select_wheel("numpy", wheels, target_tags(Target("3.11", "x86_64-manylinux_2_28")))
    arm = select_wheel("numpy", wheels, target_tags(Target("3.11", "aarch64-manylinux_2_28")))
    old = select_wheel("numpy", wheels, target_tags(Target("3.11", "x86_64-manylinux_2_17")))
    assert x86["hashes"]["sha256"] == "3" and arm["hashes"]["sha256"] == "2"
    assert old is None  # a manylinux_2_27 wheel does not run on a glibc 2.17 target


def test_pip_config_list_is_parsed():
    text = ("global.extra-index-url='file:///opt/pypi/simple file:///opt/more/simple'\n"
            "global.find-links='/opt/wheels'\n:env:.find-links='/opt/wheels'\nglobal.cert='/x'\n")
    s = parse_pip_config_list(text)
    assert s.indexes == ("file:///opt/pypi/simple", "file:///opt/more/simple")
    assert s.find_links == ("/opt/wheels",) and s.index_url is None
