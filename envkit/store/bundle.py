"""Moving a run to another host: ``envkit export`` writes a bundle, ``envkit import`` checks and installs it.

A bundle is a gzip'd tar whose first member is ``envkit-bundle.json`` (format, run id, every file's sha256 and size,
the image if any), followed by the run's folder under ``run/``: record, logs, lockfile, code snapshot, outputs,
bootstrap reports and traces. ``--with-image`` adds ``image.tar`` (``docker save`` of the one image, untagged).

Import trusts nothing, and refuses before it writes when it can:

- the bundle must be a regular file; the manifest must come first and list every member with its size, so an
  unlisted member, a size that differs from the manifest, or a total over the disk's free space (or
  ``ENVKIT_MAX_BUNDLE_BYTES``) is refused from the tar headers alone, before anything is extracted;
- members are extracted with ``tarfile``'s ``data`` filter (no absolute paths, no ``..``, no links that resolve
  outside the folder, no devices); links are allowed only inside the code snapshot, never at the run folder's fixed
  names; hard links and special files are refused;
- every file must hash to the manifest's sha256, and code and outputs to the record's;
- an image archive must hold exactly one image, untagged, whose config digest is the record's image ID; it is loaded
  only then, and removed again if the engine reports another ID.

Only then does the run appear in the store, in one rename, marked as imported (``origin.json``): replay then takes
no host path from its record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.atomic import atomic_output
from envkit.errors import BundleError, StoreError
from envkit.hashing import sha256_file
from envkit.manifest import is_safe_relpath
from envkit.store.filestore import FileStore, validate_run_id
from envkit.store.layout import (
    BUNDLE_DIRS,
    BUNDLE_FILES,
    CODE_DIR,
    FIXED_NAMES,
    RECORD,
    WORK_DIR,
    RunLayout,
    output_location,
)
from envkit.store.record import RunRecord
from envkit.store.verify import check_run_files

if TYPE_CHECKING:
    from envkit.engine import Engine

FORMAT = 2  # 2: the manifest gives each file's size; 1 (read only): sha256 alone
MANIFEST = "envkit-bundle.json"
IMAGE_FILE = "image.tar"
RUN = "run"
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_MEMBERS = 200_000
ENV_MAX_BYTES = "ENVKIT_MAX_BUNDLE_BYTES"
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_IMPORT_PREFIX = ".import-"
_REFUSE = "do not import this bundle; it was not written by envkit export, or was altered"


@dataclass
class ImportResult:
    run_id: str
    image_loaded: str | None
    already_present: bool


# --- export ------------------------------------------------------------------------------------------------------------
def run_members(record: RunRecord, layout: RunLayout) -> list[tuple[Path, str]]:
    """The files of a run folder that travel with it, as ``(path, name in the bundle)``.

    Never follows a link out of the run folder: a link at one of the folder's fixed names, an output path that is
    not relative, or a parent folder that is a link stops the export (a crafted or damaged run folder).

    Raises:
        BundleError: naming the offending path; an output the record lists that is gone from the folder.
    """
    root = layout.root
    for name in FIXED_NAMES:
        if (root / name).is_symlink():
            raise BundleError(f"run {record.run_id}: {name} in its folder is a link; refusing to follow it",
                              hint="the run folder was altered; export a run made by envkit")
    members: list[tuple[Path, str]] = []
    for name in BUNDLE_FILES:
        path = root / name
        if path.is_file():
            members.append((path, f"{RUN}/{name}"))
    for name in BUNDLE_DIRS:
        folder = root / name
        if not folder.is_dir():
            continue
        for current, dirs, files in os.walk(folder):  # never follows links
            here = Path(current)
            for entry in sorted(files) + sorted(d for d in dirs if (here / d).is_symlink()):
                path = here / entry
                members.append((path, f"{RUN}/{name}/{path.relative_to(folder).as_posix()}"))
            dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
    work = root / WORK_DIR
    for entry in record.outputs:  # outputs in the working copy (the rest of work/ is the code snapshot)
        try:
            rel, folder_name = output_location(entry.path)
        except ValueError as exc:
            raise BundleError(f"run {record.run_id}: {exc}", hint="the record was altered") from exc
        if folder_name != WORK_DIR:
            continue
        path = work / rel
        _inside(path, work, record.run_id)
        if not path.is_symlink() and not path.is_file():
            raise BundleError(f"run {record.run_id}: output {entry.path} is missing from its folder",
                              hint="the run folder was altered after the run; it cannot be exported whole")
        members.append((path, f"{RUN}/{WORK_DIR}/{rel}"))
    for path, _ in members:
        _inside(path, root, record.run_id)
    return members


def _inside(path: Path, root: Path, run_id: str) -> None:
    """Refuse a path whose parent folders leave ``root`` through a link."""
    real_parent = os.path.realpath(path.parent)
    real_root = os.path.realpath(root)
    if real_parent != real_root and not real_parent.startswith(real_root + os.sep):
        raise BundleError(f"run {run_id}: {path} lies outside the run folder (through a link)",
                          hint="the run folder was altered; export a run made by envkit")


def export_run(store: FileStore, run_id: str, dest: Path, engine: Engine | None = None,
               with_image: bool = False) -> dict[str, Any]:
    """Write the run's bundle to ``dest`` (atomically, fsynced) and return its manifest.

    Raises:
        RunNotFoundError / InvalidRunIdError: no such run. BundleError: ``dest`` is a folder, the run folder is
        unsafe or incomplete. ImageNotFoundError: --with-image and the image is gone.
    """
    record = store.read(run_id)
    members = run_members(record, store.layout(run_id))
    dest = Path(dest)
    if dest.is_dir():
        raise BundleError(f"{dest} is a folder", hint="give the bundle's file name, e.g. -o run.tar.gz")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create {dest.parent}: {exc.strerror}") from exc
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for path, arc in members:
        if path.is_file() and not path.is_symlink():
            files[arc] = sha256_file(path)
            sizes[arc] = path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="envkit-export-", dir=dest.parent) as tmp:
        image_info = None
        if with_image:
            image_info = _save_image(engine, record, Path(tmp) / IMAGE_FILE)
            files[IMAGE_FILE] = image_info["sha256"]
            sizes[IMAGE_FILE] = (Path(tmp) / IMAGE_FILE).stat().st_size
        manifest = {"format": FORMAT, "run_id": run_id, "files": files, "sizes": sizes, "image": image_info}
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with atomic_output(dest) as out, tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as tar:
            tar.add(Path(tmp) / MANIFEST, arcname=MANIFEST)  # first: import reads it before anything else
            for path, arc in members:
                tar.add(path, arcname=arc, recursive=False)
            if with_image:
                tar.add(Path(tmp) / IMAGE_FILE, arcname=IMAGE_FILE)
    return manifest


def _save_image(engine: Engine | None, record: RunRecord, dest: Path) -> dict[str, Any]:
    if engine is None or not record.image.id:
        raise BundleError("--with-image needs the Docker engine and a run with a recorded image")
    h = hashlib.sha256()
    with dest.open("wb") as out:
        for chunk in engine.save(record.image.id):
            h.update(chunk)
            out.write(chunk)
    return {"file": IMAGE_FILE, "id": record.image.id, "sha256": h.hexdigest()}


# --- import ------------------------------------------------------------------------------------------------------------
def import_bundle(store: FileStore, bundle: Path, engine: Engine | None = None,
                  max_bytes: int | None = None) -> ImportResult:
    """Check a bundle completely, then install its run (and load its image).

    Raises:
        BundleError: not a regular file, unreadable, unsafe, too large, or a file whose hash does not match (named).
    """
    if not hasattr(tarfile, "data_filter"):
        raise BundleError(f"this Python ({'.'.join(map(str, sys.version_info[:3]))}) cannot extract a bundle "
                          "safely: tarfile's data filter appeared in Python 3.11.4",
                          hint="run envkit on Python 3.11.4 or newer (3.12+ has it too)")
    bundle = Path(bundle)
    try:
        st = os.stat(bundle)
    except OSError as exc:
        raise BundleError(f"bundle {bundle} not found ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{bundle} is not a regular file", hint="give a bundle written by `envkit export`")
    try:
        store.runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {store.runs_dir}: {exc.strerror}") from exc
    _remove_stale_imports(store.runs_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_IMPORT_PREFIX}{os.getpid()}-", dir=store.runs_dir))
    try:
        manifest, total = _extract(bundle, tmp, _limit(store, max_bytes))
        run_id = validate_run_id(manifest.get("run_id"))
        for arc, sha in sorted(manifest["files"].items()):
            path = tmp / arc
            if not path.is_file() or path.is_symlink():
                raise BundleError(f"bundle lacks {arc}, which its manifest lists", hint=_REFUSE)
            if sha256_file(path) != sha:
                raise BundleError(f"{arc} in the bundle does not match its recorded sha256 (altered after export)",
                                  hint="get an intact copy of the bundle")
        run = tmp / RUN
        for name in FIXED_NAMES:
            if (run / name).is_symlink():
                raise BundleError(f"bundle member {RUN}/{name} is a link", hint=_REFUSE)
        record = _read_record(run / RECORD, run_id)
        _check_record_files(run, record)
        image = tmp / IMAGE_FILE
        loaded = _load_image(engine, image, record) if image.is_file() else None
        target = store.runs_dir / run_id
        if target.exists():
            return ImportResult(run_id, loaded, True)
        (run / WORK_DIR).mkdir(exist_ok=True)  # outputs only; the code snapshot is run/code
        RunLayout(run).origin.write_text(json.dumps({"bundle": str(bundle.resolve()), "imported": time.time(),
                                                     "bytes": total}, sort_keys=True))
        try:
            os.replace(run, target)
        except OSError:
            if target.exists():  # another import of the same run won the race
                return ImportResult(run_id, loaded, True)
            raise
    except OSError as exc:
        raise BundleError(f"cannot import {bundle}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    store.write(store.read(run_id))  # index the imported run
    return ImportResult(run_id, loaded, False)


def bundle_has_image(bundle: Path) -> bool:
    """Whether a bundle's manifest lists an image (only its first member is read).

    Raises:
        BundleError: not a readable bundle.
    """
    try:
        with tarfile.open(bundle, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{bundle} does not start with an envkit bundle manifest", hint=_REFUSE)
            return IMAGE_FILE in _parse_manifest(tar.extractfile(first).read())["files"]
    except BundleError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{bundle} is not a readable envkit bundle ({exc})") from exc


def is_imported(layout: RunLayout) -> bool:
    """Whether a run came from a bundle or a registry (its record names another host's paths)."""
    return layout.origin.exists()


def _limit(store: FileStore, max_bytes: int | None) -> int:
    free = shutil.disk_usage(store.runs_dir).free
    cap = free - 512 * 2**20  # leave room for the store's own writes
    env = os.environ.get(ENV_MAX_BYTES, "").strip()
    if max_bytes is None and env:
        try:
            max_bytes = int(env)
        except ValueError:
            raise BundleError(f"{ENV_MAX_BYTES}={env!r} is not a number of bytes") from None
    return min(cap, max_bytes) if max_bytes is not None else cap


def _extract(bundle: Path, dest: Path, limit: int) -> tuple[dict[str, Any], int]:
    """Read the manifest (first member), check every header against it and the limit, then extract safely."""
    try:
        with tarfile.open(bundle, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile() or first.size > MAX_MANIFEST_BYTES:
                raise BundleError(f"{bundle} does not start with an envkit bundle manifest", hint=_REFUSE)
            manifest = _parse_manifest(tar.extractfile(first).read())
            sizes = manifest.get("sizes")
            total, seen = first.size, {MANIFEST}
            for m in tar:  # headers only: content is skipped, nothing is written yet
                if m is first:
                    continue  # iteration starts again at the first member
                _check_member(m, manifest, sizes)
                if m.isfile():
                    seen.add(m.name)
                total += m.size
                if total > limit:
                    raise BundleError(f"{bundle} would take more than {limit / 2**30:.1f} GiB to import",
                                      hint=f"free disk space where the store is, or raise {ENV_MAX_BYTES}")
                if len(tar.members) > MAX_MEMBERS:
                    raise BundleError(f"{bundle} has more than {MAX_MEMBERS} members", hint=_REFUSE)
            missing = sorted(set(manifest["files"]) - seen)
            if missing:
                raise BundleError(f"bundle lacks {missing[0]}, which its manifest lists", hint=_REFUSE)
            tar.extractall(dest, members=tar.members[1:], filter="data")
    except BundleError:
        raise
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError) as exc:
        raise BundleError(f"bundle member {exc.tarinfo.name!r} is a link that leaves the bundle "
                          f"({exc.tarinfo.linkname})", hint=_REFUSE) from exc
    except tarfile.FilterError as exc:
        raise BundleError(f"bundle member {exc.tarinfo.name!r} is unsafe ({exc})", hint=_REFUSE) from exc
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle} is not a readable envkit bundle ({exc})") from exc
    return manifest, total


def _parse_manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"the bundle's {MANIFEST} is not JSON", hint=_REFUSE) from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in (1, FORMAT):
        fmt = manifest.get("format") if isinstance(manifest, dict) else "?"
        raise BundleError(f"unknown bundle format {fmt!r}", hint="export it again with this envkit version")
    files, sizes = manifest.get("files"), manifest.get("sizes")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA_RE.fullmatch(v)
                                              for k, v in files.items()):
        raise BundleError("the bundle's manifest lists files badly", hint=_REFUSE)
    for arc in files:
        if not (arc == IMAGE_FILE or (arc.startswith(f"{RUN}/") and is_safe_relpath(arc))):
            raise BundleError(f"the bundle's manifest names {arc!r}, which is not part of an envkit bundle",
                              hint=_REFUSE)
    if manifest["format"] >= 2 and (not isinstance(sizes, dict) or set(sizes) != set(files) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in sizes.values())):
        raise BundleError("the bundle's manifest gives no size for every file", hint=_REFUSE)
    return manifest


def _check_member(m: tarfile.TarInfo, manifest: dict[str, Any], sizes: dict[str, int] | None) -> None:
    name = m.name
    if not is_safe_relpath(name.rstrip("/")):
        raise BundleError(f"bundle member {name!r} points outside the bundle (path traversal)", hint=_REFUSE)
    if m.isdir():
        if not (name == RUN or name.startswith(f"{RUN}/")):
            raise BundleError(f"bundle member {name!r} is not part of an envkit bundle", hint=_REFUSE)
        return
    if m.issym():
        # Project links live in the code snapshot only; the data filter refuses any that resolves outside.
        if not name.startswith(f"{RUN}/{CODE_DIR}/"):
            raise BundleError(f"bundle member {name!r} is a link outside the code snapshot", hint=_REFUSE)
        return
    if m.islnk():
        raise BundleError(f"bundle member {name!r} is a hard link", hint=_REFUSE)
    if not m.isfile():
        raise BundleError(f"bundle member {name!r} is a special file", hint=_REFUSE)
    if name not in manifest["files"]:
        raise BundleError(f"bundle member {name!r} is not listed in the bundle's manifest", hint=_REFUSE)
    if sizes is not None and sizes.get(name) != m.size:
        raise BundleError(f"bundle member {name!r} is {m.size} bytes, its manifest says {sizes.get(name)}",
                          hint=_REFUSE)


def _remove_stale_imports(runs_dir: Path) -> None:
    """Temporary folders of imports whose process is gone (a crash, a kill) are removed."""
    for path in runs_dir.glob(f"{_IMPORT_PREFIX}*"):
        pid = path.name[len(_IMPORT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _read_record(path: Path, run_id: str) -> RunRecord:
    try:
        record = RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, RecursionError, StoreError) as exc:
        raise BundleError(f"the bundle's run record is unreadable ({exc})") from exc
    if record.run_id != run_id:
        raise BundleError(f"the bundle's record names run {record.run_id}, its manifest {run_id}")
    return record


def _check_record_files(run: Path, record: RunRecord) -> None:
    """Code, git diff and outputs must hash to what the record says, not only to what the bundle's manifest says, and
    nothing may sit among them that the record does not list (the check a pulled run gets, too)."""
    absent = check_run_files(run, record, where=" in the bundle", hint="get an intact copy of the bundle")
    if absent:
        raise BundleError(f"output {absent[0]} is missing from the bundle, whose record lists it",
                          hint="get an intact copy of the bundle")


# --- the image ---------------------------------------------------------------------------------------------------------
_IMAGE_MEMBER = re.compile(r"manifest\.json|[0-9a-f]{64}\.json|[0-9a-f]{64}(/(VERSION|json|layer\.tar))?")


def check_image_archive(path: Path, image_id: str | None) -> None:
    """A ``docker save`` archive must hold exactly one image, with no name, whose config digest is ``image_id``.

    Names in an archive (``RepoTags``, a ``repositories`` file) would retag images already on the engine when it
    loads: they are refused, as is anything else a plain one-image save does not contain.

    Raises:
        BundleError: naming what is wrong.
    """
    if not image_id or not image_id.startswith("sha256:"):
        raise BundleError("the bundle carries an image but its record names none", hint=_REFUSE)
    try:
        with tarfile.open(path, "r:") as tar:
            members = {}
            for m in tar:
                if not _IMAGE_MEMBER.fullmatch(m.name.rstrip("/")) or not (m.isfile() or m.isdir()):
                    raise BundleError(f"the bundle's image archive has an unexpected member {m.name!r}",
                                      hint=_REFUSE)
                members[m.name.rstrip("/")] = m
            entry = members.get("manifest.json")
            if entry is None or entry.size > MAX_MANIFEST_BYTES:
                raise BundleError("the bundle's image archive has no manifest.json", hint=_REFUSE)
            manifest = json.loads(tar.extractfile(entry).read())
            if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
                raise BundleError("the bundle's image archive must hold exactly one image", hint=_REFUSE)
            if manifest[0].get("RepoTags"):
                raise BundleError(f"the bundle's image archive names images ({manifest[0]['RepoTags']!r:.80}); "
                                  "loading it would retag local images", hint=_REFUSE)
            config_name = manifest[0].get("Config")
            config = members.get(config_name) if isinstance(config_name, str) else None
            if config is None or config.size > MAX_MANIFEST_BYTES:
                raise BundleError("the bundle's image archive has no image config", hint=_REFUSE)
            digest = "sha256:" + hashlib.sha256(tar.extractfile(config).read()).hexdigest()
    except BundleError:
        raise
    except (tarfile.TarError, OSError, ValueError, RecursionError, EOFError) as exc:
        raise BundleError(f"the bundle's image archive is unreadable ({exc})", hint=_REFUSE) from exc
    if digest != image_id:
        raise BundleError(f"the bundle's image is {digest[:19]}, the run used {image_id[:19]}", hint=_REFUSE)


def _load_image(engine: Engine | None, path: Path, record: RunRecord) -> str:
    check_image_archive(path, record.image.id)
    if engine is None:
        raise BundleError("the bundle carries an image; loading it needs the Docker engine")
    ids = set(engine.load(path))
    if ids != {record.image.id}:
        for other in ids - {record.image.id}:
            with contextlib.suppress(Exception):
                engine.remove_image(other, force=True)
        raise BundleError(f"the bundle's image loaded as {', '.join(sorted(i[:19] for i in ids)) or 'nothing'}, "
                          f"the run used {(record.image.id or '?')[:19]}", hint=_REFUSE)
    return record.image.id
