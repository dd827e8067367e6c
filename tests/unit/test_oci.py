"""The pure parts of runs in a registry: references, safe names, link targets, manifest checks (no registry)."""

from __future__ import annotations

import hashlib
import json

import pytest

from envkit.errors import BundleError, RegistryError
from envkit.store.oci import ARTIFACT_TYPE, Layer, canonical_manifest, is_safe_name, read_manifest
from envkit.store.ociclient import Reference, is_loopback, parse_reference
from envkit.store.registry import _stays_inside
from envkit.store.verify import output_member

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5000/team/runs", Reference("127.0.0.1:5000", "team/runs")),
    ("localhost/runs:run-1", Reference("localhost", "runs", tag="run-1")),
    (f"reg.example.com/a/b-c/d_e@{D}", Reference("reg.example.com", "a/b-c/d_e", digest=D)),
    (f"[::1]:5000/x:t@{D}", Reference("[::1]:5000", "x", "t", D)),
])
def test_references_parse_and_print_back(text, expected):
    assert parse_reference(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["runs", "team/runs", "127.0.0.1:5000/Team", "127.0.0.1:5000/a//b",
                                  f"127.0.0.1:5000/x@sha512:{'a' * 128}", "127.0.0.1:5000/x@sha256:abc",
                                  "127.0.0.1:5000/x:-bad", "http://127.0.0.1:5000/x", "127.0.0.1:5000/x\n"])
def test_bad_references_are_one_line(text):
    with pytest.raises(RegistryError, match="is not a registry reference") as err:
        parse_reference(text)
    assert "\n" not in str(err.value)


def test_a_pull_needs_a_digest_and_a_push_takes_no_tag():
    with pytest.raises(RegistryError, match="REGISTRY/REPO@sha256"):
        parse_reference("127.0.0.1:5000/x:latest", require_digest=True)
    with pytest.raises(RegistryError):
        parse_reference("127.0.0.1:5000/x:latest", allow_tag=False)


@pytest.mark.parametrize("registry, loopback", [("127.0.0.1:5000", True), ("127.9.9.9", True), ("localhost:1", True),
                                                ("[::1]:5000", True), ("10.0.0.1:5000", False),
                                                ("registry.example.com", False), ("localhost.evil.com", False)])
def test_only_loopback_registries_are_plain_http(registry, loopback):
    assert is_loopback(registry) is loopback


@pytest.mark.parametrize("name, safe", [("a", True), ("code/a b/ü.py", True), ("..a/b..", True), ("", False),
                                        ("/a", False), ("a/../b", False), ("..", False), ("a/./b", False),
                                        ("a//b", False), ("a/", False), ("a\\b", False), ("a\0b", False),
                                        ("a\nb", False), ("x" * 1025, False), (None, False)])
def test_safe_names(name, safe):
    assert is_safe_name(name) is safe


@pytest.mark.parametrize("name, target, inside", [
    ("code/a", "b", True), ("code/a", "../record.json", True), ("code/x/a", "../../meta/r", True),
    ("code/a", "../..", False), ("code/a", "/etc/passwd", False), ("code/a", "b/../../..", False),
    ("code/a", "b/..", False), ("code/a", "", False), ("code/a", "./b", True), ("code/x/a", "../../..", False),
])
def test_link_targets_stay_inside_the_run(name, target, inside):
    assert _stays_inside(name, target) is inside


def test_outputs_map_to_their_folders():
    assert output_member("$ENVKIT_OUTPUT_DIR/m.json") == "output/m.json"
    assert output_member("ckpt/model.pt") == "work/ckpt/model.pt"


def manifest_bytes(**changes) -> bytes:
    layers = [Layer("b.txt", D, 3, False), Layer("a/x.py", D, 3, True)]
    body = json.loads(canonical_manifest(layers, {"k": "v"}, ARTIFACT_TYPE,
                                         {"mediaType": "x/y", "digest": D, "size": 2}))
    body.update(changes)
    return json.dumps(body).encode()


def check(body: bytes, artifact_type: str | None = ARTIFACT_TYPE):
    return read_manifest(body, "sha256:" + hashlib.sha256(body).hexdigest(), "r", artifact_type)


def test_a_manifest_is_read_with_its_files_in_order():
    manifest, config, layers = check(manifest_bytes())
    assert [(x.name, x.executable) for x in layers] == [("b.txt", False), ("a/x.py", True)]
    assert config.digest == D and manifest["annotations"] == {"k": "v"}


@pytest.mark.parametrize("changes, message", [
    ({"artifactType": "application/vnd.other"}, "not an envkit artifact"),
    ({"mediaType": "application/vnd.docker.distribution.manifest.v2+json"}, "not an OCI image manifest"),
    ({"layers": [{"digest": "sha256:12", "size": 1}]}, "malformed digest"),
    ({"layers": [{"digest": D, "size": -1}]}, "malformed size"),
    ({"layers": [{"digest": D, "size": True}]}, "malformed size"),
    ({"layers": [{"digest": D, "size": 1, "annotations": {"org.opencontainers.image.title": "../x"}}]}, "safe"),
    ({"layers": [{"digest": D, "size": 1, "annotations": {"org.opencontainers.image.title": 5}}]}, "not a string"),
    ({"layers": {}}, "no list of layers"),
    ({"config": "x"}, "config is not an object"),
])
def test_malformed_manifests_are_refused(changes, message):
    with pytest.raises(BundleError, match=message):
        check(manifest_bytes(**changes))


def test_a_manifest_must_hash_to_the_digest_asked_for():
    with pytest.raises(BundleError, match="not to the digest asked for"):
        read_manifest(manifest_bytes(), D, "r", None)
