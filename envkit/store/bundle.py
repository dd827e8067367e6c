"""Moving a run to another host: ``envkit export`` writes a bundle, ``envkit import`` checks and installs it.

A bundle is a gzip'd tar with ``envkit-bundle.json`` (format version, run id, the sha256 of every file, the image
file if any) and the run's folder under ``run/``: record, logs, lockfile, code snapshot, outputs, bootstrap reports
and traces. ``--with-image`` adds ``image.tar`` (``docker save``). Import trusts nothing: it refuses absolute paths,
``..``, links that leave the bundle, special files, any file whose hash differs from the bundle's manifest, and any
code or output whose hash differs from the record; only then does the run appear in the store, in one rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from envkit.errors import BundleError, StoreError
from envkit.hashing import sha256_file
from envkit.store.filestore import FileStore, validate_run_id
from envkit.store.layout import BUNDLE_DIRS, BUNDLE_FILES, CODE_DIR, RECORD, WORK_DIR, output_location
from envkit.store.record import RunRecord

if TYPE_CHECKING:
    from envkit.engine import Engine

FORMAT = 1
MANIFEST = "envkit-bundle.json"
IMAGE_FILE = "image.tar"
_RUN_PARTS = (*BUNDLE_FILES, *BUNDLE_DIRS)


@dataclass
class ImportResult:
    run_id: str
    image_loaded: str | None
    already_present: bool


def export_run(store: FileStore, run_id: str, dest: Path, engine: Engine | None = None,
               with_image: bool = False) -> dict[str, Any]:
    """Write the run's bundle to ``dest`` (atomically) and return its manifest.

    Raises:
        RunNotFoundError / InvalidRunIdError: no such run. ImageNotFoundError: --with-image and the image is gone.
    """
    record = store.read(run_id)
    run_dir = store.run_dir(run_id)
    files: dict[str, str] = {}
    members: list[tuple[Path, str]] = []
    for part in _RUN_PARTS:
        src = run_dir / part
        if src.is_file():
            members.append((src, f"run/{part}"))
        elif src.is_dir():
            for path in sorted(p for p in src.rglob("*") if p.is_file() or p.is_symlink()):
                members.append((path, f"run/{part}/{path.relative_to(src).as_posix()}"))
    for entry in record.outputs:  # outputs in the working copy (the rest of work/ is the code snapshot)
        rel, folder = output_location(entry.path)
        if folder == WORK_DIR:
            members.append((run_dir / WORK_DIR / rel, f"run/{WORK_DIR}/{rel}"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="envkit-export-", dir=dest.parent) as tmp:
        image_info = None
        if with_image:
            image_info = _save_image(engine, record, Path(tmp) / IMAGE_FILE)
            files[IMAGE_FILE] = image_info["sha256"]
        for path, arc in members:
            if path.is_file() and not path.is_symlink():
                files[arc] = sha256_file(path)
        manifest = {"format": FORMAT, "run_id": run_id, "files": files, "image": image_info}
        (Path(tmp) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        part = Path(tmp) / "bundle.tar.gz"
        with tarfile.open(part, "w:gz", compresslevel=1) as tar:
            tar.add(Path(tmp) / MANIFEST, arcname=MANIFEST)
            for path, arc in members:
                tar.add(path, arcname=arc, recursive=False)
            if with_image:
                tar.add(Path(tmp) / IMAGE_FILE, arcname=IMAGE_FILE)
        os.replace(part, dest)
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


def _check_member(m: tarfile.TarInfo) -> None:
    path = PurePosixPath(m.name)
    if path.is_absolute() or ".." in path.parts or m.name.startswith("/"):
        raise BundleError(f"bundle member {m.name!r} points outside the bundle (path traversal)",
                          hint="do not import this bundle; it was not written by envkit export")
    if m.issym():
        target = PurePosixPath(m.linkname)
        resolved = PurePosixPath(*path.parent.parts, *target.parts) if not target.is_absolute() else target
        depth = 0
        for part in resolved.parts:
            depth += -1 if part == ".." else (0 if part == "." else 1)
            if depth < 0:
                break
        if target.is_absolute() or depth < 0:
            raise BundleError(f"bundle member {m.name!r} is a link that leaves the bundle ({m.linkname})",
                              hint="do not import this bundle")
    elif m.islnk():
        raise BundleError(f"bundle member {m.name!r} is a hard link", hint="do not import this bundle")
    elif not (m.isfile() or m.isdir()):
        raise BundleError(f"bundle member {m.name!r} is a special file", hint="do not import this bundle")
    if not (m.name == MANIFEST or m.name == IMAGE_FILE or m.name == "run" or m.name.startswith("run/")):
        raise BundleError(f"bundle member {m.name!r} is not part of an envkit bundle")


def import_bundle(store: FileStore, bundle: Path, engine: Engine | None = None) -> ImportResult:
    """Check a bundle completely, then install its run (and load its image).

    Raises:
        BundleError: unreadable, unsafe, or a file whose hash does not match (named).
    """
    if not bundle.is_file():
        raise BundleError(f"bundle {bundle} not found")
    store.runs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=store.runs_dir) as tmp:
        root = Path(tmp)
        try:
            with tarfile.open(bundle, "r:*") as tar:
                members = tar.getmembers()
                for m in members:
                    _check_member(m)
                tar.extractall(root, members=members, filter="tar")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BundleError(f"{bundle} is not a readable envkit bundle ({exc})") from exc
        manifest = _read_manifest(root)
        run_id = validate_run_id(manifest.get("run_id"))
        for arc, sha in sorted(manifest["files"].items()):
            path = root / arc
            if not path.is_file():
                raise BundleError(f"bundle lacks {arc}, which its manifest lists")
            if sha256_file(path) != sha:
                raise BundleError(f"{arc} in the bundle does not match its recorded sha256 (altered after export)",
                                  hint="get an intact copy of the bundle")
        record = _read_record(root / "run" / RECORD, run_id)
        _check_record_files(root / "run", record)
        loaded = _load_image(engine, root / IMAGE_FILE, manifest, record) if (root / IMAGE_FILE).is_file() else None
        target = store.runs_dir / run_id
        if target.exists():
            return ImportResult(run_id, loaded, True)
        (root / "run" / WORK_DIR).mkdir(exist_ok=True)  # outputs only; the code snapshot is run/code
        os.replace(root / "run", target)
    store.write(store.read(run_id))  # index the imported run
    return ImportResult(run_id, loaded, False)


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"the bundle has no readable {MANIFEST}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"unknown bundle format {manifest.get('format') if isinstance(manifest, dict) else '?'}",
                          hint="export it again with this envkit version")
    return manifest


def _read_record(path: Path, run_id: str) -> RunRecord:
    try:
        record = RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, StoreError) as exc:
        raise BundleError(f"the bundle's run record is unreadable ({exc})") from exc
    if record.run_id != run_id:
        raise BundleError(f"the bundle's record names run {record.run_id}, its manifest {run_id}")
    return record


def _check_record_files(run: Path, record: RunRecord) -> None:
    """Code and outputs must hash to what the record says, not only to what the bundle's manifest says."""
    for entry in record.code.files:
        path = run / CODE_DIR / entry.path
        if entry.link is None and (not path.is_file() or sha256_file(path) != entry.sha256):
            raise BundleError(f"code file {entry.path} in the bundle does not match the run record",
                              hint="get an intact copy of the bundle")
    for entry in record.outputs:
        try:
            rel, folder = output_location(entry.path)
        except ValueError as exc:
            raise BundleError(f"the bundle's record names an unsafe output path ({exc})") from exc
        path = run / folder / rel
        if entry.link is None and (not path.is_file() or sha256_file(path) != entry.sha256):
            raise BundleError(f"output {entry.path} in the bundle does not match the run record",
                              hint="get an intact copy of the bundle")


def _load_image(engine: Engine | None, path: Path, manifest: dict[str, Any], record: RunRecord) -> str:
    if engine is None:
        raise BundleError("the bundle carries an image; loading it needs the Docker engine")
    ids = set(engine.load(path))
    if record.image.id not in ids:
        raise BundleError(f"the bundle's image loaded as {', '.join(sorted(i[:19] for i in ids))}, the run used "
                          f"{(record.image.id or '?')[:19]}")
    return record.image.id
