"""Runs in a registry: ``envkit push`` stores a run folder as an OCI artifact, ``envkit pull`` brings it back checked.

The artifact's files are the run folder's own paths (``record.json``, ``stdout.log``, ``stderr.log``, ``lock.yaml``,
``git.diff``, ``code/...``, ``meta/...``, ``output/...`` and ``work/<output>``): the code snapshot and the outputs as
the record lists them, so nothing the record does not vouch for is carried from code/ or the working copy. Outputs
larger than a limit stay behind, listed in the config as not carried. Symlinks (in the snapshot, outputs or meta/)
travel in the config, since a blob is a file. The manifest is tagged ``run-<run id>`` so that a run can be found by
its id (docker-registry 2.8 has no referrers API, and a tag costs one request).

A pulled run is trusted only once checked: the artifact by its digest (:mod:`envkit.store.oci`), then, as an
imported bundle is, every code file and output against the hashes in its record (:func:`check_run_files`). Only
then is the folder renamed into the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envkit.errors import BundleError, RunNotFoundError, StoreError
from envkit.store.filestore import FileStore, validate_run_id
from envkit.store.layout import (
    BUNDLE_FILES,
    CODE_DIR,
    META_DIR,
    OUTPUT_DIR,
    WORK_DIR,
    RunLayout,
)
from envkit.store.oci import (
    ARTIFACT_TYPE,
    MAX_MANIFEST_BYTES,
    TITLE,
    Progress,
    is_safe_name,
    pull_artifact,
    push_artifact,
    read_manifest,
)
from envkit.store.ociclient import Reference, RegistryClient, parse_reference
from envkit.store.record import RUN_ID_RE, RunRecord
from envkit.store.verify import check_run_files, code_member, output_member, tree

CONFIG_MEDIA_TYPE = "application/vnd.envkit.run.config.v1+json"
CONFIG_FORMAT = 1
RUN_ID = "io.envkit.run.id"
IMAGE_ID = "io.envkit.image.id"
CREATED = "org.opencontainers.image.created"
TREES = tuple(f"{d}/" for d in (CODE_DIR, META_DIR, OUTPUT_DIR, WORK_DIR))
DEFAULT_MAX_OUTPUT_BYTES = 100 * 2**20  # per output file; larger ones are listed as not carried
DEFAULT_MAX_PULL_BYTES = 16 * 2**30
DEFAULT_MAX_PULL_FILES = 20_000  # a 4 MiB manifest holds about 18,000 files


@dataclass(frozen=True)
class RunContents:
    """What a run folder contributes to its artifact."""

    files: list[tuple[str, Path]]  # (name in the run folder, file)
    sha256: dict[str, str]  # name -> hex sha256 the record gives (the registry checks it on upload)
    links: list[tuple[str, str]]  # (name, link target)
    not_carried: list[dict[str, Any]]  # outputs over the size limit: {path (as recorded), size, sha256}


@dataclass(frozen=True)
class PulledRun:
    run_id: str
    already_present: bool  # the store had the run; the pulled copy was checked, then dropped
    not_carried: list[str]  # recorded outputs the artifact did not carry (by recorded path)


def run_contents(run_dir: Path, record: RunRecord, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> RunContents:
    """List what a run folder contributes: record, logs, lock, git diff, code, meta/, outputs up to the limit.

    Raises:
        StoreError: a file the record lists is missing from the folder, or the record names an unsafe path.
    """
    files: list[tuple[str, Path]] = []
    sha: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    not_carried: list[dict[str, Any]] = []
    for name in BUNDLE_FILES:
        if (run_dir / name).is_file() and not (run_dir / name).is_symlink():
            files.append((name, run_dir / name))
    entries = [(code_member(e.path), e) for e in record.code.files]
    for entry in record.outputs:
        try:
            entries.append((output_member(entry.path), entry))
        except ValueError:
            raise StoreError(f"the record of run {record.run_id} names an unsafe path {entry.path[:200]!r}") from None
    for name, entry in entries:
        if not is_safe_name(name):
            raise StoreError(f"the record of run {record.run_id} names an unsafe path {entry.path[:200]!r}")
        if entry.link is not None:
            links.append((name, entry.link))
        elif not name.startswith(TREES[0]) and entry.size > max_output_bytes:
            not_carried.append(entry.to_dict())
        elif not (run_dir / name).is_file():
            raise StoreError(f"run {record.run_id} lacks {name}, which its record lists",
                             hint="the run folder was altered; push an intact copy")
        else:
            files.append((name, run_dir / name))
            sha[name] = entry.sha256
    for name in tree(run_dir, META_DIR):  # bootstrap reports and traces: not in the record
        path = run_dir / name
        if path.is_symlink():
            links.append((name, os.readlink(path)))
        elif path.is_file():
            files.append((name, path))
    return RunContents(files, sha, links, not_carried)


def push_run(run_dir: Path, record: RunRecord, registry_repo: str, *,
             max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, tag: bool = True,
             on_progress: Progress | None = None) -> tuple[str, RunContents]:
    """Push a run folder as an artifact (tagged ``run-<id>``) and return ``REGISTRY/REPO@sha256:...`` and what went.

    Raises:
        RegistryError: the registry is unreachable or refuses. StoreError / BundleError: the folder does not match
            its record.
    """
    contents = run_contents(run_dir, record, max_output_bytes)
    config = {"format": CONFIG_FORMAT, "run_id": record.run_id,
              "links": [{"path": n, "target": t} for n, t in sorted(contents.links)],
              "not_carried": contents.not_carried}
    annotations = {RUN_ID: record.run_id, CREATED: record.created}
    if record.image.id:
        annotations[IMAGE_ID] = record.image.id
    ref = push_artifact(registry_repo, contents.files, annotations, ARTIFACT_TYPE,
                        json.dumps(config, sort_keys=True, separators=(",", ":")).encode(), CONFIG_MEDIA_TYPE,
                        tag=f"run-{record.run_id}" if tag else None, known_sha256=contents.sha256,
                        on_progress=on_progress)
    return ref, contents


def resolve_run(registry_repo: str, run_id: str) -> str:
    """``REGISTRY/REPO@sha256:...`` of a pushed run, found by its tag ``run-<run id>``.

    Raises:
        RunNotFoundError: the repository has no such tag. BundleError: the tag points at something else.
    """
    validate_run_id(run_id)
    repo = parse_reference(registry_repo, allow_tag=False, allow_digest=False)
    tag = f"run-{run_id}"
    with RegistryClient(repo.registry) as client:
        body = client.get_manifest(repo.repository, tag, MAX_MANIFEST_BYTES)
    if body is None:
        raise RunNotFoundError(f"no run {run_id} in {registry_repo}",
                               hint=f"push it there with `envkit push {run_id} {registry_repo}`")
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    ref = str(Reference(repo.registry, repo.repository, digest=digest))
    manifest = read_manifest(body, digest, ref, ARTIFACT_TYPE)[0]
    if (manifest.get("annotations") or {}).get(RUN_ID) != run_id:
        raise BundleError(f"{registry_repo}:{tag} points at an artifact of another run")
    return ref


def pull_run(store: FileStore, ref: str, *, expect_run_id: str | None = None,
             max_total_bytes: int = DEFAULT_MAX_PULL_BYTES, max_files: int = DEFAULT_MAX_PULL_FILES,
             on_progress: Progress | None = None) -> PulledRun:
    """Fetch a run by digest, check it completely, and install it in the store (one rename), marked as imported.

    A run the store already holds is not downloaded again: only the manifest is read, for its run id.

    Raises:
        RegistryError: unreachable, refusing, no such artifact. BundleError: anything altered, unsafe or too large,
            a file that does not match the record, or a run id other than ``expect_run_id``.
    """
    present = _already_present(store, ref, expect_run_id)
    if present is not None:
        return present
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pull-", dir=store.runs_dir) as tmp:
        root = Path(tmp) / "run"
        pulled = pull_artifact(ref, root, max_total_bytes, max_files, artifact_type=ARTIFACT_TYPE,
                               allow=_is_run_member, on_progress=on_progress)
        config = _read_config(pulled.config, ref)
        run_id = config["run_id"]
        said = (pulled.manifest.get("annotations") or {}).get(RUN_ID)
        if said != run_id or (expect_run_id is not None and run_id != expect_run_id):
            raise BundleError(f"{ref} is run {run_id}, its manifest says {str(said)[:40]}"
                              + (f", and run {expect_run_id} was asked for" if expect_run_id else ""))
        _make_links(root, config["links"], {name for name, _ in pulled.files})
        layout = RunLayout(root)
        record = _read_record(layout.record, run_id)
        streamed = {x["annotations"][TITLE]: x["digest"].removeprefix("sha256:") for x in pulled.manifest["layers"]}
        not_carried = check_run_files(root, record, streamed)
        layout.work.mkdir(exist_ok=True)
        # Marked as imported, as a bundle's run is: replay takes no host path (mounts) from a foreign record.
        layout.origin.write_text(json.dumps({"registry": ref, "imported": time.time(),
                                             "bytes": sum(p.stat().st_size for _, p in pulled.files)},
                                            sort_keys=True))
        target = store.runs_dir / run_id
        if target.exists():
            return PulledRun(run_id, True, not_carried)
        try:
            os.replace(root, target)
        except OSError as exc:
            if target.exists():  # pulled by another process meanwhile
                return PulledRun(run_id, True, not_carried)
            raise StoreError(f"cannot install run {run_id} in {store.runs_dir}: {exc.strerror or exc}") from exc
    store.write(store.read(run_id))  # index the pulled run
    return PulledRun(run_id, False, not_carried)


def _already_present(store: FileStore, ref: str, expect_run_id: str | None) -> PulledRun | None:
    """The run ``ref`` holds, when the store already has it (its manifest is fetched and checked; nothing else)."""
    parsed = parse_reference(ref, allow_tag=False, require_digest=True)
    assert parsed.digest is not None
    with RegistryClient(parsed.registry) as client:
        body = client.get_manifest(parsed.repository, parsed.digest, MAX_MANIFEST_BYTES)
    if body is None:
        return None  # the pull says so, in its own words
    manifest = read_manifest(body, parsed.digest, ref, ARTIFACT_TYPE)[0]
    run_id = (manifest.get("annotations") or {}).get(RUN_ID)
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id) \
            or (expect_run_id is not None and run_id != expect_run_id):
        return None
    layout = store.layout(run_id)
    if not layout.record.is_file():
        return None
    record = store.read(run_id)
    absent = [e.path for e in record.outputs if not os.path.lexists(layout.output_path(e.path))]
    return PulledRun(run_id, True, absent)


# --- helpers -----------------------------------------------------------------------------------------------------
def _is_run_member(name: str) -> bool:
    return name in BUNDLE_FILES or name.startswith(TREES)


def _read_config(data: bytes, ref: str) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except ValueError as exc:
        raise BundleError(f"the config of {ref} is not JSON") from exc
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise BundleError(f"{ref} has an unknown run config format", hint="pull it with the envkit that pushed it")
    if not isinstance(config.get("run_id"), str) or not RUN_ID_RE.fullmatch(config["run_id"]):
        raise BundleError(f"the config of {ref} names a malformed run id {str(config.get('run_id'))[:60]!r}")
    links = config.get("links")
    if not isinstance(links, list) or not all(isinstance(x, dict) and isinstance(x.get("path"), str)
                                              and isinstance(x.get("target"), str) for x in links):
        raise BundleError(f"the config of {ref} has a malformed list of links")
    return config


def _make_links(root: Path, links: list[dict[str, str]], files: set[str]) -> None:
    """Create the artifact's symlinks, each one checked to stay inside the run folder, none above another name."""
    names = [x["path"] for x in links]
    everything = files | set(names)
    for item in links:
        name, target = item["path"], item["target"]
        if not is_safe_name(name) or not _is_run_member(name) or name in files or names.count(name) > 1:
            raise BundleError(f"the artifact's link {name[:200]!r} is not a safe new path in a run folder")
        if any(other.startswith(name + "/") for other in everything):
            raise BundleError(f"the artifact's link {name!r} would be a folder of other files")
        if not _stays_inside(name, target):
            raise BundleError(f"the artifact's link {name!r} points outside the run ({target[:200]!r})",
                              hint="do not use this artifact; it was not written by envkit push")
    for item in sorted(links, key=lambda x: x["path"]):
        path = root / item["path"]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(item["target"], path)
        except OSError as exc:
            raise BundleError(f"cannot create the link {item['path']}: {exc.strerror or exc}") from exc


def _stays_inside(name: str, target: str) -> bool:
    """A link target that is relative, climbs only at its start (so no link on the way can lengthen the climb), and
    does not climb above the run folder from where the link sits."""
    if not target or target.startswith("/") or "\0" in target or "\\" in target:
        return False
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    return ".." not in parts[ups:] and ups <= name.count("/")


def _read_record(path: Path, run_id: str) -> RunRecord:
    try:
        record = RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise BundleError("the artifact has no record.json") from None
    except (OSError, ValueError, StoreError) as exc:
        raise BundleError(f"the artifact's run record is unreadable ({exc})") from exc
    if record.run_id != run_id:
        raise BundleError(f"the artifact's record names run {record.run_id}, its config {run_id}")
    return record
