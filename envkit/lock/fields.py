"""A lockfile's parsed YAML -> :class:`~envkit.lock.model.Lockfile`: keys and types, strictly.

Every mapping is checked for unknown and missing keys and every value for its type, so a lock written by another
tool (or altered) is refused in one line naming the value. What each value may look like is checked afterwards, on
the typed lock (:mod:`envkit.lock.checks`).
"""

from __future__ import annotations

from typing import Any

from envkit.errors import LockfileError
from envkit.lock.model import (
    SCHEMA_VERSION,
    BaseImage,
    DebianBase,
    DebPin,
    ImageParts,
    Lockfile,
    PinnedPackage,
    Platform,
)
from envkit.lock.values import PROJECT, shown

TOP = {"schema_version", "content_sha256", "name", "python", "platform", "epoch", "base", "images", "image_parts",
       "requirements", "sources", "environment", "packages", "generated_by"}
PACKAGE = ("name", "version", "filename", "url", "sha256")
BASE = {"ref", "digest", "python", "kind", "image_id", "source", "debian"}
DEBIAN = {"suite", "packages", "mmdebstrap", "debs"}
DEB = ("name", "version", "arch", "filename", "sha256", "size")
PARTS = {"recipe", "base_layers", "venv_layer"}


def lock_from_dict(data: dict[str, Any], source: str) -> Lockfile:
    """The typed lock of a current-schema dict (``data`` was upgraded already).

    Raises:
        LockfileError: an unknown or missing key, a value of the wrong type, a package without a hash.
    """
    check_keys(data, TOP, source, "lockfile")
    for key in ("name", "python", "platform", "epoch", "base", "packages"):
        if key not in data:
            raise LockfileError(f"{source}: missing key {key!r}")
    from envkit.lock.values import python_problem

    problem = python_problem(data["python"])
    if problem:
        raise LockfileError(f"{source}: python {problem}")
    p = mapping(data, "platform", {"os", "arch", "tag"}, source)
    packages = data["packages"]
    if packages is not None and not isinstance(packages, list):
        raise LockfileError(f"{source}: packages must be a list of packages, not {type(packages).__name__}")
    if not packages:
        raise LockfileError(f"{source}: pins no packages")
    epoch = data["epoch"]
    if type(epoch) is not int:
        raise LockfileError(f"{source}: epoch must be an integer (seconds since 1970), not {type(epoch).__name__}")
    return Lockfile(
        name=string(data["name"], source, "name"),
        epoch=epoch,
        python=data["python"],
        platform=Platform(**{k: string(p[k], source, f"platform.{k}") for k in ("os", "arch", "tag")}),
        base=_base(data, source),
        requirements=tuple(strings(data.get("requirements"), source, "requirements")),
        sources={k: strings(v, source, f"sources value of {shown(k)}")
                 for k, v in string_map(data.get("sources"), source, "sources", None).items()},
        environment=string_map(data.get("environment"), source, "environment", str),
        packages=tuple(_package(p, i, source) for i, p in enumerate(packages)),
        generated_by=string(data.get("generated_by", ""), source, "generated_by"),
        images=string_map(data.get("images"), source, "images", str),
        image_parts=_parts(data.get("image_parts"), source),
        schema_version=SCHEMA_VERSION,
        content_sha256=string(data.get("content_sha256") or "", source, "content_sha256"),
    )


def _base(data: dict[str, Any], source: str) -> BaseImage:
    b = mapping(data, "base", BASE, source, optional={"digest", "image_id", "source", "debian"})
    optional = {"digest", "image_id", "source"}
    fields = {k: string(b.get(k), source, f"base.{k}", optional=k in optional) for k in BASE - {"debian"}}
    debian = None
    if b.get("debian") is not None:
        d = mapping(b, "debian", DEBIAN, source, where="base.debian")
        debs = d["debs"]
        if not isinstance(debs, list) or not debs:
            raise LockfileError(f"{source}: base.debian.debs must be a non-empty list of .debs")
        debian = DebianBase(suite=string(d["suite"], source, "base.debian.suite"),
                            packages=tuple(strings(d["packages"], source, "base.debian.packages")),
                            mmdebstrap=string(d["mmdebstrap"], source, "base.debian.mmdebstrap"),
                            debs=tuple(_deb(x, i, source) for i, x in enumerate(debs)))
    return BaseImage(**fields, debian=debian)


def _deb(d: Any, i: int, source: str) -> DebPin:
    if not isinstance(d, dict):
        raise LockfileError(f"{source}: base.debian.debs[{i}] is not a mapping")
    check_keys(d, set(DEB), source, f"base.debian.debs[{i}]")
    missing = [k for k in DEB if k not in d]
    if missing:
        raise LockfileError(f"{source}: base.debian.debs[{i}] lacks {missing[0]!r}")
    size = d["size"]
    if type(size) is not int:
        raise LockfileError(f"{source}: base.debian.debs[{i}].size must be an integer")
    return DebPin(**{k: string(d[k], source, f"base.debian.debs[{i}].{k}") for k in DEB if k != "size"}, size=size)


def _parts(value: Any, source: str) -> ImageParts | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise LockfileError(f"{source}: image_parts must be a mapping")
    check_keys(value, PARTS, source, "image_parts")
    missing = sorted(PARTS - set(value))
    if missing:
        raise LockfileError(f"{source}: image_parts lacks {missing[0]!r}")
    return ImageParts(recipe=string(value["recipe"], source, "image_parts.recipe"),
                      base_layers=tuple(strings(value["base_layers"], source, "image_parts.base_layers")),
                      venv_layer=string(value["venv_layer"], source, "image_parts.venv_layer"))


def _package(p: Any, i: int, source: str) -> PinnedPackage:
    if not isinstance(p, dict):
        raise LockfileError(f"{source}: packages[{i}] is not a mapping")
    name = p.get("name")
    label = name if isinstance(name, str) and PROJECT.fullmatch(name) else f"packages[{i}]"
    check_keys(p, set(PACKAGE), source, f"package {label}")
    if not p.get("sha256"):
        raise LockfileError(
            f"{source}: package {label} has no sha256 hash",
            hint="every package must be pinned with a hash; regenerate with `envkit lock SPEC.yaml`",
        )
    missing = [k for k in PACKAGE if k not in p]
    if missing:
        raise LockfileError(f"{source}: package {label} lacks {missing[0]!r}")
    return PinnedPackage(**{k: string(p[k], source, f"package {label}: {k}", optional=k == "url") for k in PACKAGE})


def check_keys(d: dict[Any, Any], allowed: set[str], source: str, what: str) -> None:
    odd = [k for k in d if not isinstance(k, str)]
    if odd:
        raise LockfileError(f"{source}: keys must be strings; {what} has the key {shown(odd[0])}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise LockfileError(f"{source}: unknown key {shown(unknown[0])} in {what}",
                            hint="the lockfile was edited by hand or written by another tool")


def mapping(data: dict[str, Any], key: str, allowed: set[str], source: str,
            optional: set[str] | None = None, where: str | None = None) -> dict[str, Any]:
    value = data.get(key)
    where = where or key
    if not isinstance(value, dict):
        raise LockfileError(f"{source}: {where} must be a mapping")
    check_keys(value, allowed, source, where)
    missing = allowed - (optional or set()) - set(value)
    if missing:
        raise LockfileError(f"{source}: {where} lacks {sorted(missing)[0]!r}")
    return value


def string(value: Any, source: str, what: str, optional: bool = False) -> Any:
    if not isinstance(value, str) and not (optional and value is None):
        raise LockfileError(f"{source}: {what} must be a string, not {type(value).__name__}")
    return value


def strings(value: Any, source: str, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LockfileError(f"{source}: {what} must be a list of strings, not {type(value).__name__}")
    return [string(v, source, f"{what}[{i}]") for i, v in enumerate(value)]


def string_map(value: Any, source: str, what: str, values: type | None) -> dict[str, Any]:
    """A mapping with string keys (and ``values``-typed values when given)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LockfileError(f"{source}: {what} must be a mapping, not {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise LockfileError(f"{source}: {what} keys must be strings")
    for k, v in value.items():
        if values is not None and not isinstance(v, values):
            raise LockfileError(f"{source}: {what} value of {shown(k)} must be a string, not {type(v).__name__}")
    return dict(value)
