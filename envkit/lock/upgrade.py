"""Lockfiles of older schemas, upgraded on read; newer ones refused with the envkit that reads them.

``_UPGRADES`` maps a schema version to the function that turns a lock dict of that version into one of the next,
as the run record's upgrades do (:mod:`envkit.store.record`). Each upgrade first checks the old document's own
content hash with the old rules, so a hand edit is caught before the document is rewritten; the upgraded lock is
then sealed with the current rules (its content hash is a new one).

Schema 1 (envkit 0.1) pinned the base by the local image ID only: upgraded, it is a base of kind ``image``, which
builds only where that image exists (or of kind ``registry`` when the lock recorded where it was pulled from).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from envkit.errors import LockfileError
from envkit.lock.values import shown

WRITER = re.compile(r"envkit [0-9][0-9A-Za-z.+-]{0,31}")

def _v1_to_v2(data: dict[str, Any], source: str) -> dict[str, Any]:
    from envkit.lock.fields import check_keys

    check_keys(data, {"schema_version", "content_sha256", "name", "python", "platform", "base", "requirements",
                      "sources", "environment", "packages", "generated_by"}, source, "lockfile (schema 1)")
    base = data.get("base")
    if not isinstance(base, dict):
        raise LockfileError(f"{source}: base must be a mapping")
    check_keys(base, {"ref", "digest", "python", "repo_digest", "source"}, source, "base (schema 1)")
    v1_base = {"ref": base.get("ref"), "digest": base.get("digest"), "python": base.get("python"),
               "repo_digest": base.get("repo_digest"), "source": base.get("source")}
    body = {"name": data.get("name"), "python": data.get("python"), "platform": data.get("platform"),
            "base": v1_base, "requirements": data.get("requirements") or [], "sources": data.get("sources") or {},
            "environment": data.get("environment") or {}, "packages": data.get("packages"),
            "generated_by": data.get("generated_by", ""), "schema_version": 1}
    try:
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LockfileError(f"{source}: a value of the lock cannot be read ({type(exc).__name__})") from exc
    if hashlib.sha256(canonical.encode()).hexdigest() != data.get("content_sha256"):
        raise LockfileError(
            f"{source}: content hash does not match its content (the lockfile was edited by hand)",
            hint="regenerate it with `envkit lock SPEC.yaml` instead of editing it",
        )
    repo_digest = v1_base["repo_digest"]
    if isinstance(repo_digest, str) and "@sha256:" in repo_digest:
        # it came from a registry: pull it from there by digest, and check the ID it had
        repo, _, digest = repo_digest.partition("@")
        new_base = {"kind": "registry", "ref": repo, "digest": digest, "image_id": v1_base["digest"],
                    "python": v1_base["python"], "source": v1_base["source"], "debian": None}
    else:
        new_base = {"kind": "image", "ref": v1_base["ref"], "digest": v1_base["digest"], "image_id": None,
                    "python": v1_base["python"], "source": v1_base["source"], "debian": None}
    from envkit.lock.model import DEFAULT_EPOCH

    return {**{k: v for k, v in data.items() if k not in ("base", "schema_version")}, "schema_version": 2,
            "epoch": DEFAULT_EPOCH, "base": new_base, "images": {}, "image_parts": None}


_UPGRADES: dict[int, Callable[[dict[str, Any], str], dict[str, Any]]] = {1: _v1_to_v2}


def upgraded(data: Any, source: str) -> tuple[dict[str, Any], int]:
    """``data`` as a current-schema dict, and the schema version it had.

    Raises:
        LockfileError: not a mapping, no integer schema_version, a version newer than this envkit reads (naming the
            envkit that wrote it, which reads it), or an older document whose own content hash does not match.
    """
    from envkit.lock.model import SCHEMA_VERSION

    if not isinstance(data, dict):
        raise LockfileError(f"{source} is not an envkit lockfile (expected a mapping)")
    version = data.get("schema_version")
    if type(version) is not int or not (1 <= version <= SCHEMA_VERSION):
        newer = type(version) is int and version > SCHEMA_VERSION
        writer = data.get("generated_by")
        # the envkit that wrote it reads it: a lock names its writer ("envkit 0.3.0")
        reader = f"{writer} (which wrote it) or later" if isinstance(writer, str) and WRITER.fullmatch(writer) \
            else "a newer envkit"
        raise LockfileError(
            f"{source}: unknown lockfile schema_version {shown(version)} (this envkit reads {SCHEMA_VERSION} and "
            f"upgrades older ones{f'; {reader} reads it' if newer else ''})",
            hint="upgrade envkit" if newer else "regenerate the lock with `envkit lock SPEC.yaml`",
        )
    was = version
    while version < SCHEMA_VERSION:
        data = _UPGRADES[version](dict(data), source)
        version = data["schema_version"]
    return data, was
