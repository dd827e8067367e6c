"""The pure parts of a reproducible build: apt sources, Packages indexes, the .deb cache, the assembled config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from envkit.errors import FetchError, HashMismatchError
from envkit.image import assemble, debian, oci
from envkit.image.debfetch import fetch_debs
from envkit.lock import debian as lock_debian
from envkit.lock.debian import deb_cache_path
from envkit.lock.model import DebPin

EPOCH = 1_700_000_000


def test_host_sources_follow_the_hosts_mirrors_for_another_suite(tmp_path):
    apt = tmp_path / "etc" / "apt" / "sources.list.d"
    apt.mkdir(parents=True)
    (apt / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n")
    (apt / "extra.list").write_text("deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian/ bookworm main\n"
                                    "deb http://other.example/x stable contrib\n")
    sources = lock_debian.host_sources("trixie", root=tmp_path)
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://deb.debian.org/debian", "trixie"), ("http://deb.debian.org/debian", "trixie-updates"),
        ("http://deb.debian.org/debian-security", "trixie-security"), ("http://mirror.example/debian", "trixie")]
    assert sources[-1].line() == "deb [signed-by=/k.gpg] http://mirror.example/debian trixie main"


def test_packages_index_and_dpkg_status_give_pins(tmp_path):
    (tmp_path / "main_Packages").write_text(
        "Package: bash\nVersion: 5.2.15-2+b2\nArchitecture: amd64\nDescription: GNU shell\n long text\n"
        "Filename: pool/main/b/bash/bash_5.2.15-2+b2_amd64.deb\nSize: 1500\nSHA256: " + "a" * 64 + "\n\n"
        "Package: bash\nVersion: 5.2.15-2+b1\nArchitecture: amd64\nFilename: pool/old.deb\nSize: 1\n"
        "SHA256: " + "b" * 64 + "\n")
    status = lock_debian.read_status("bash\t5.2.15-2+b2\tamd64\tii \nremoved\t1\tamd64\trc \n")
    assert status == [("bash", "5.2.15-2+b2", "amd64")]
    found = lock_debian._index([tmp_path / "main_Packages"], set(status))
    assert found[status[0]] == DebPin("bash", "5.2.15-2+b2", "amd64", "pool/main/b/bash/bash_5.2.15-2+b2_amd64.deb",
                                      "a" * 64, 1500)
    listing = debian.packages_listing([found[status[0]], DebPin("adduser", "3.134", "all", "p", "c" * 64, 1)])
    assert listing == "adduser=3.134\nbash=5.2.15-2+b2\n"


def deb(tmp_path: Path, name: str, data: bytes, version: str = "1:2.0-1") -> DebPin:
    return DebPin(name, version, "amd64", f"pool/main/{name[0]}/{name}/{name}_2.0-1_amd64.deb",
                  hashlib.sha256(data).hexdigest(), len(data))


def test_debs_come_from_the_apt_cache_or_a_mirror_and_are_cached_by_hash(tmp_path):
    archives, mirror = tmp_path / "archives", tmp_path / "mirror"
    local = deb(tmp_path, "libfoo", b"local deb")
    remote = deb(tmp_path, "bar", b"remote deb")
    archives.mkdir()
    (archives / "libfoo_1%3a2.0-1_amd64.deb").write_bytes(b"local deb")  # apt's name for an epoch version
    (mirror / Path(remote.filename).parent).mkdir(parents=True)
    (mirror / remote.filename).write_bytes(b"remote deb")
    paths = fetch_debs([local, remote], tmp_path / "cache", [mirror.as_uri()], local_dirs=[archives])
    assert paths == [deb_cache_path(tmp_path / "cache", local), deb_cache_path(tmp_path / "cache", remote)]
    assert paths[1].read_bytes() == b"remote deb"
    (mirror / remote.filename).unlink()  # once cached, no source is needed
    assert fetch_debs([remote], tmp_path / "cache", [mirror.as_uri()], local_dirs=()) == paths[1:]


def test_a_deb_no_source_has_is_named_with_every_place_tried(tmp_path):
    gone = deb(tmp_path, "libgone", b"x")
    with pytest.raises(FetchError) as err:
        fetch_debs([gone], tmp_path / "cache", [(tmp_path / "mirror").as_uri()], local_dirs=[tmp_path])
    assert "libgone 1:2.0-1 (amd64)" in err.value.message and "mirror/pool/main/l/libgone" in err.value.message
    assert "snapshot.debian.org" in err.value.hint


def test_a_deb_with_another_hash_is_refused_with_both_hashes(tmp_path):
    pin = deb(tmp_path, "libfoo", b"the real one")
    (tmp_path / "libfoo_1%3a2.0-1_amd64.deb").write_bytes(b"an impostor")
    with pytest.raises(HashMismatchError) as err:
        fetch_debs([pin], tmp_path / "cache", [], local_dirs=[tmp_path])
    assert pin.sha256 in err.value.message and hashlib.sha256(b"an impostor").hexdigest() in err.value.message
    cached = deb_cache_path(tmp_path / "cache", pin)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"tampered")
    with pytest.raises(HashMismatchError, match="cached"):
        fetch_debs([pin], tmp_path / "cache", [], local_dirs=())


def test_the_final_config_keeps_the_base_and_adds_envkits_layer_at_the_epoch():
    base = {"architecture": "arm64", "variant": "v8", "os": "linux", "created": "2024-05-01T10:00:00.123Z",
            "docker_version": "24.0", "container_config": {"Cmd": ["x"]},
            "config": {"Env": ["PATH=/usr/bin", "LANG=C.UTF-8"], "Entrypoint": ["/entry.sh"],
                       "Labels": {"maintainer": "x", "io.envkit.lock.sha256": "old"}, "Cmd": ["bash"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64]},
            "history": [{"created": "2024-05-01T10:00:00Z", "created_by": "ADD rootfs"},
                        {"created": "2024-05-01T10:00:01Z", "created_by": "CMD", "empty_layer": True}]}
    diff_ids = ["sha256:" + "1" * 64, "sha256:" + "2" * 64]
    cfg = assemble.config_on_base(base, diff_ids=diff_ids, epoch=EPOCH, env={"PATH": "/opt/envkit/venv/bin:/usr/bin"},
                                  labels={"io.envkit.lock.sha256": "new"}, created_by="venv")
    parsed = json.loads(cfg)
    assert parsed["architecture"] == "arm64" and parsed["variant"] == "v8"
    assert parsed["created"] == "2023-11-14T22:13:20Z"
    assert "docker_version" not in parsed and "container_config" not in parsed
    assert parsed["config"]["Env"] == ["LANG=C.UTF-8", "PATH=/opt/envkit/venv/bin:/usr/bin"]
    assert parsed["config"]["Labels"] == {"maintainer": "x", "io.envkit.lock.sha256": "new"}
    assert parsed["config"]["Entrypoint"] == ["/entry.sh"] and parsed["config"]["Cmd"] == ["python"]
    assert parsed["config"]["WorkingDir"] == "/work"
    assert parsed["history"][:2] == base["history"]
    assert parsed["history"][2] == {"created": "2023-11-14T22:13:20Z", "created_by": "venv"}
    assert parsed["rootfs"]["diff_ids"] == diff_ids
    assert cfg == assemble.config_on_base(base, diff_ids=diff_ids, epoch=EPOCH,
                                          env={"PATH": "/opt/envkit/venv/bin:/usr/bin"},
                                          labels={"io.envkit.lock.sha256": "new"}, created_by="venv")


def test_the_venv_recipe_installs_by_requirement_and_compiles_in_fixed_shards():
    argv = assemble.venv_command("3.11")
    script = argv[-1]
    assert argv[:2] == ["sh", "-ec"]
    assert "--no-index" in script and "--require-hashes" in script and "--no-compile" in script
    assert f"-r {assemble.REQUIREMENTS_MOUNT}" in script  # requirement lines, not wheel paths (no direct_url.json)
    assert "unchecked-hash" in script and 'PYTHONHASHSEED="0"' in script
    assert script.rstrip().endswith(f"/opt/envkit/venv/lib {assemble.COMPILE_SHARDS}")
    assert "cpu_count" in script and "-j" not in script.split("compileall")[1].split("\n")[0]


def test_a_base_envkit_made_assembles_with_a_venv_tree(tmp_path):
    tree = tmp_path / "venv"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "python").symlink_to("/usr/bin/python3")
    (tree / "pyvenv.cfg").write_text("home = /usr/bin\n")
    base_layer = oci.write_layer(tree / "bin", tmp_path / "base.tar", EPOCH, prefix="usr/local/bin")
    base_cfg = oci.image_config(diff_ids=[base_layer.diff_id], epoch=EPOCH, env={"LANG": "C.UTF-8"})
    base = assemble.base_archive(base_cfg, [base_layer])
    one = assemble.assemble(base, tree, tmp_path / "one.tar", layer_path=tmp_path / "v1.tar", epoch=EPOCH,
                            env={"A": "1"}, labels={"l": "1"})
    two = assemble.assemble(base, tree, tmp_path / "two.tar", layer_path=tmp_path / "v2.tar", epoch=EPOCH,
                            env={"A": "1"}, labels={"l": "1"})
    assert one.image_id == two.image_id
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    assert [b.diff_id for b in one.layers] == [base_layer.diff_id, one.venv_layer.diff_id]
    assert oci.read_docker_archive(tmp_path / "one.tar", verify=True).image_id == one.image_id
