"""A run folder of foreign origin (pulled from a registry, unpacked from a bundle) checked against its own record.

Such a folder is laid out as the store lays out a run, except that ``work/`` holds the outputs only (the rest of the
working copy is the code snapshot, which lives in ``code/``). Nothing in it is trusted until :func:`check_run_files`
has compared every code file, the git diff and every output with the hashes its record gives, and made sure that
nothing sits in ``code/``, ``output/`` or ``work/`` that the record does not list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from envkit.errors import BundleError
from envkit.hashing import sha256_file
from envkit.manifest import is_safe_relpath, manifest_sha256
from envkit.store.layout import CODE_DIR, GIT_DIFF, OUTPUT_DIR, WORK_DIR, output_location
from envkit.store.record import RunRecord

_HINT = "do not use this run; get it again from an intact copy"


def output_member(recorded: str) -> str:
    """The path, inside a run folder, of an output recorded as ``recorded`` (``work/model.pt``,
    ``output/metrics.json`` for ``$ENVKIT_OUTPUT_DIR/metrics.json``).

    Raises:
        ValueError: the recorded path is not a safe relative path.
    """
    rel, folder = output_location(recorded)
    return f"{folder}/{rel}"


def code_member(path: str) -> str:
    """The path, inside a run folder, of a code file recorded as ``path``."""
    return f"{CODE_DIR}/{path}"


def check_record_paths(record: RunRecord) -> None:
    """Every path the record names stays inside its folder, and its code list hashes to its code sha256.

    Raises:
        BundleError: naming the first unsafe path, or an edited code list.
    """
    for entry in record.code.files:
        if not is_safe_relpath(entry.path):
            raise BundleError(f"the run record names an unsafe path {entry.path[:200]!r}", hint=_HINT)
    for entry in record.outputs:
        try:
            output_member(entry.path)
        except ValueError:
            raise BundleError(f"the run record names an unsafe path {entry.path[:200]!r}", hint=_HINT) from None
    if record.code.sha256 is not None and manifest_sha256(record.code.files) != record.code.sha256:
        raise BundleError("the run record's code list does not hash to its code sha256 (the record was edited)",
                          hint=_HINT)


def check_run_files(run: Path, record: RunRecord, verified: Mapping[str, str] | None = None, *, where: str = "",
                    hint: str = _HINT) -> list[str]:
    """Check a foreign run folder against its record; return the recorded outputs it does not hold.

    Every code file must be there and hash to the record (a link must point where recorded), the git diff too; every
    output there must hash to the record; nothing may sit under code/, output/ or work/ that the record does not list.

    Args:
        run: the run folder.
        record: its record (already parsed; its paths are checked here first).
        verified: names mapped to the hex sha256 their bytes were checked against as they were written (a pull's
            streamed blobs): those are not read again.
        where: said after a file's name in messages (" in the bundle").
        hint: the hint of every error.

    Raises:
        BundleError: naming the first file that is missing, altered or unexpected.
    """
    check_record_paths(record)
    verified = verified or {}
    for entry in record.code.files:
        if not _matches(run, code_member(entry.path), entry.sha256, entry.link, verified):
            raise BundleError(f"code file {entry.path}{where} does not match the run record", hint=hint)
    if record.code.diff_sha256 is not None and not _matches(run, GIT_DIFF, record.code.diff_sha256, None, verified):
        raise BundleError(f"{GIT_DIFF}{where} does not match the run record", hint=hint)
    absent, listed = [], {code_member(e.path) for e in record.code.files}
    for entry in record.outputs:
        name = output_member(entry.path)
        listed.add(name)
        if not os.path.lexists(run / name):
            absent.append(entry.path)
        elif not _matches(run, name, entry.sha256, entry.link, verified):
            raise BundleError(f"output {entry.path}{where} does not match the run record", hint=hint)
    for name in tree(run, CODE_DIR) + tree(run, OUTPUT_DIR) + tree(run, WORK_DIR):
        if name not in listed:
            raise BundleError(f"{name}{where} is not part of run {record.run_id} (its record does not list it)",
                              hint=hint)
    return absent


def tree(run: Path, top: str) -> list[str]:
    """Names (relative to ``run``) of the files and links under ``run/top``, sorted; links are not followed."""
    found = []
    for root, dirs, names in os.walk(run / top):
        found += [Path(root, n).relative_to(run).as_posix()
                  for n in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]]
    return sorted(found)


def _matches(run: Path, name: str, sha256: str, link: str | None, verified: Mapping[str, str]) -> bool:
    path = run / name
    if link is not None:
        return path.is_symlink() and os.readlink(path) == link
    if not path.is_file() or path.is_symlink():
        return False
    return verified[name] == sha256 if name in verified else sha256_file(path) == sha256
