"""Pipelines of runs: an earlier run's recorded output as a later run's input (``--input RUN:PATH[:DEST]``).

A stage-2 job reads what stage 1 wrote. The output is taken from stage 1's run folder, checked against stage 1's
record (every byte hashed again: a file changed since is refused), mounted read-only, and recorded as a lineage link
(:class:`envkit.store.record.Upstream`: run id, path, target, sha256), so ``envkit show`` names the upstream runs and
a replay can check, or rebuild (``--upstream``), the input.

PATH is an output as the run recorded it (``model.pt``, ``out/``, ``$ENVKIT_OUTPUT_DIR/metrics.json``), a file or a
folder of outputs. DEST defaults to where the job would find it in its own working copy: ``/work/PATH``. A folder
must hold exactly what the run left there: its outputs, and files of its code snapshot it did not change.

Mount points inside the working copy are envkit's to make and remove (:func:`make_mount_points`,
:func:`remove_mount_points`): the engine would otherwise leave an empty placeholder there, owned by root, that would
look like an output of the run (:func:`is_mount_point` keeps it out of the outputs in any case).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envkit.engine import Mount
from envkit.errors import InputChangedError, RunNotFoundError, UpstreamError
from envkit.manifest import (
    ManifestEntry,
    hash_path,
    is_safe_relpath,
    manifest,
    manifest_sha256,
)
from envkit.run.mounts import check_source, check_target
from envkit.settings import CONTAINER_WORKDIR
from envkit.store.filestore import FileStore
from envkit.store.layout import OUTPUT_PREFIX, RunLayout
from envkit.store.record import RunRecord, Upstream

WHOLE_OUTPUT_DIR = OUTPUT_PREFIX.rstrip("/")  # PATH naming every file under $ENVKIT_OUTPUT_DIR
NEVER_INPUTS = ("__pycache__/", "*.pyc")  # bytecode a job may leave beside its outputs: never outputs, never inputs
Progress = Callable[[str, int], Callable[[int], None]]  # (label, total bytes) -> advance(n)


@dataclass(frozen=True)
class UpstreamInput:
    """One resolved input: the link for the record, the read-only mount, and its files as hashed now (paths under
    the mount target: they join the run's ``inputs``)."""

    link: Upstream
    mount: Mount
    entries: list[ManifestEntry]


def parse_input(text: str) -> tuple[str, str, str | None]:
    """``RUN:PATH[:DEST]`` -> (run reference, output path, container target or None).

    Raises:
        UpstreamError: not of that form, or PATH is not a relative path inside the run.
    """
    ref, sep, rest = text.partition(":")
    dest = None
    head, colon, tail = rest.rpartition(":")
    if colon and tail.startswith("/"):
        rest, dest = head, tail
    path = rest.rstrip("/")
    inner = path.removeprefix(OUTPUT_PREFIX)
    if not sep or not ref or not path or (path != WHOLE_OUTPUT_DIR and not is_safe_relpath(inner)):
        raise UpstreamError(f"--input {text!r} is not RUN:PATH[:DEST] with PATH an output of that run",
                            hint="e.g. --input last:model.pt, or --input 20261123T2009:out/:/data")
    return ref, path, dest


def input_target(path: str, dest: str | None) -> str:
    """Where the job sees the input: ``dest``, or ``/work/PATH`` (its place in the run that wrote it).

    Raises:
        MountError: a target envkit or the image owns (the working copy itself, a system folder).
        UpstreamError: no DEST for the whole output folder.
    """
    if dest is None:
        if path == WHOLE_OUTPUT_DIR:
            raise UpstreamError(f"--input ...:{path} needs a DEST", hint=f"e.g. --input RUN:{path}:/data")
        dest = f"{CONTAINER_WORKDIR}/{path.removeprefix(OUTPUT_PREFIX)}"
    clean = posixpath.normpath(dest) if dest.startswith("/") else dest
    if clean.startswith(CONTAINER_WORKDIR + "/") and clean == dest.rstrip("/"):
        return clean  # inside the working copy: a file or folder the job reads where it expects it
    return check_target(dest)


def resolve_input(store: FileStore, text: str, progress: Progress | None = None) -> UpstreamInput:
    """An ``--input`` checked against its run's record and ready to mount.

    Raises:
        UpstreamError: the run did not succeed, or PATH is not one of its outputs. InputChangedError: the output
            changed since its run recorded it. RunNotFoundError, AmbiguousRunIdError, InvalidRunIdError: RUN.
    """
    ref, path, dest = parse_input(text)
    run_id = store.resolve(ref)
    record = store.read(run_id)
    if record.status != "succeeded":
        raise UpstreamError(f"run {run_id} {record.status}" + (f" (exit {record.exit_code})"
                                                               if record.exit_code is not None else "")
                            + ": its outputs are not taken as inputs", hint="use a run that succeeded")
    expected = outputs_under(record, path)
    if not expected:
        shown = ", ".join(e.path for e in record.outputs[:5]) or "none"
        raise UpstreamError(f"{path} is not an output of run {run_id}", hint=f"its outputs: {shown}")
    target = input_target(path, dest)
    return _checked(store.layout(run_id), record, path, target, expected, progress)


def resolve_recorded(store: FileStore, link: Upstream, source_run: str | None = None,
                     override: Path | None = None, progress: Progress | None = None) -> UpstreamInput:
    """A recorded input again, for a replay: from ``source_run`` (the upstream run's replay, under ``--upstream``),
    else from the run that wrote it, else from ``override`` (``--mount TARGET=PATH``); it must still hash to the
    recorded sha256.

    Raises:
        UpstreamError: the run is not in this store and no override was given. InputChangedError: the bytes differ.
    """
    where = f"input {link.target} (output {link.path} of run {link.run_id})"
    if override is not None:
        source = check_source(override)
        current = _hash(source, link.target, progress)
    else:
        run_id = source_run or link.run_id
        try:
            record = store.read(run_id)
        except RunNotFoundError:
            raise UpstreamError(f"{where}: run {run_id} is not in this store",
                                hint=f"import that run too, or give the input with --mount {link.target}=PATH") \
                from None
        layout = store.layout(run_id)
        expected = outputs_under(record, link.path)
        if not expected:
            raise InputChangedError(f"{where}: run {run_id} has no output {link.path}",
                                    hint="its upstream replay did not write it: see that replay's verdict")
        return _checked(layout, record, link.path, link.target, expected, progress, want=link.sha256)
    digest = _digest(current, single=not source.is_dir())
    if digest != link.sha256:
        raise InputChangedError(f"{where} differs from the recorded one (sha256 {digest[:12]}..., recorded "
                                f"{link.sha256[:12]}...)", hint="give the same data as the original run")
    return UpstreamInput(Upstream(link.run_id, link.path, link.target, digest, _size(current)),
                         Mount(source, link.target), _entries(current, link.target, not source.is_dir()))


def outputs_under(record: RunRecord, path: str) -> list[ManifestEntry]:
    """The run's output ``path`` itself, or every output below the folder ``path``."""
    exact = [e for e in record.outputs if e.path == path]
    if exact:
        return exact
    prefix = OUTPUT_PREFIX if path == WHOLE_OUTPUT_DIR else path + "/"
    return [e for e in record.outputs if e.path.startswith(prefix)]


def _checked(layout: RunLayout, record: RunRecord, path: str, target: str, expected: list[ManifestEntry],
             progress: Progress | None, want: str | None = None) -> UpstreamInput:
    """Hash the output again where the run left it and compare it with the run's record (and with ``want``)."""
    single = len(expected) == 1 and expected[0].path == path
    source = layout.output if path == WHOLE_OUTPUT_DIR else layout.output_path(path)
    if not (source.is_file() if single else source.is_dir()):
        raise InputChangedError(f"output {path} of run {record.run_id} is gone from {source}",
                                hint="the run folder was changed by hand; rerun or replay that run")
    current = _hash(source, target, progress)
    name = f"output {path} of run {record.run_id}"
    if single:
        if current[0].sha256 != expected[0].sha256:
            raise InputChangedError(f"{name} changed since the run recorded it (sha256 {current[0].sha256[:12]}..., "
                                    f"recorded {expected[0].sha256[:12]}...)", hint="rerun or replay that run")
    else:
        _check_folder(record, path, expected, current, name)
    digest = _digest(current, single)
    if want is not None and digest != want:
        raise InputChangedError(f"{name} differs from the input recorded for this run (sha256 {digest[:12]}..., "
                                f"recorded {want[:12]}...)", hint="replay that run again, or check its verdict")
    return UpstreamInput(Upstream(record.run_id, path, target, digest, _size(current)),
                         Mount(check_source(source), target), _entries(current, target, single))


def _check_folder(record: RunRecord, path: str, expected: list[ManifestEntry], current: list[ManifestEntry],
                  name: str) -> None:
    """A folder input holds exactly its run's outputs there, and code files the run left unchanged."""
    prefix = OUTPUT_PREFIX if path == WHOLE_OUTPUT_DIR else path + "/"
    known = {e.path[len(prefix):]: e for e in expected}
    if path != WHOLE_OUTPUT_DIR:
        known = {**{e.path[len(prefix):]: e for e in record.code.files if e.path.startswith(prefix)}, **known}
    now = {e.path: e for e in current}
    for rel, entry in sorted(now.items()):
        old = known.get(rel)
        if old is None:
            raise InputChangedError(f"{name} holds {rel}, which the run did not leave there",
                                    hint="remove it, or rerun that run")
        if (old.sha256, old.link) != (entry.sha256, entry.link):
            raise InputChangedError(f"{name}: {rel} changed since the run recorded it", hint="rerun or replay that run")
    missing = sorted(set(known) - set(now))
    if missing:
        raise InputChangedError(f"{name}: {missing[0]} is gone", hint="rerun or replay that run")


def _hash(source: Path, label: str, progress: Progress | None) -> list[ManifestEntry]:
    """Entries of a file (one, named by its basename) or of a folder's files (relative paths)."""
    if source.is_dir():
        total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
        advance = progress(f"hashing input {label}", total) if progress else None
        return manifest(source, exclude=NEVER_INPUTS, on_progress=advance).entries
    advance = progress(f"hashing input {label}", source.stat().st_size) if progress else None
    result = hash_path(source, source.name, None, advance)
    return [result[0]] if result else []


def _digest(entries: list[ManifestEntry], single: bool) -> str:
    return entries[0].sha256 if single and entries else manifest_sha256(entries)


def _size(entries: list[ManifestEntry]) -> int:
    return sum(e.size for e in entries)


def _entries(entries: list[ManifestEntry], target: str, single: bool) -> list[ManifestEntry]:
    if single:
        return [ManifestEntry(target, e.size, e.sha256, e.link) for e in entries]
    return [ManifestEntry(f"{target}/{e.path}", e.size, e.sha256, e.link) for e in entries]


# --- mount points inside the working copy ---------------------------------------------------------------------------
def work_relative(target: str) -> str | None:
    """A container target's path inside the working copy (``/work/a/b`` -> ``a/b``), or None when outside it."""
    return target[len(CONTAINER_WORKDIR) + 1:] if target.startswith(CONTAINER_WORKDIR + "/") else None


def make_mount_points(work: Path, mounts: list[Mount]) -> list[Path]:
    """Create the placeholder (an empty file or folder) each mount inside the working copy needs, as envkit's own
    user, before the container starts; returns what was created, deepest last, for :func:`remove_mount_points`."""
    created: list[Path] = []
    for m in mounts:
        rel = work_relative(m.target)
        if rel is None:
            continue
        point = work / rel
        for parent in reversed(point.parents):
            if parent != work and work in parent.parents and not parent.exists():
                parent.mkdir()
                created.append(parent)
        if point.is_symlink():
            point.unlink()  # the job's copy of a link must not redirect the mount
        if not point.exists():
            if Path(m.source).is_dir():
                point.mkdir()
            else:
                point.touch()
            created.append(point)
    return created


def remove_mount_points(created: list[Path]) -> None:
    """Remove the placeholders again (best effort: :func:`is_mount_point` keeps them out of the outputs anyway)."""
    for path in reversed(created):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            elif path.stat().st_size == 0:
                path.unlink()
        except OSError:
            continue


def is_mount_point(output: str, mounts: list[Mount]) -> bool:
    """Whether a path of the working copy is, or lies under, a mount target: never an output of the run."""
    for m in mounts:
        rel = work_relative(m.target)
        if rel is not None and (output == rel or output.startswith(rel + "/")):
            return True
    return False
