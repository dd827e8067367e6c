"""The run folder: the one place that names every path in it.

::

    <store>/runs/<run_id>/
        record.json        the run record (the truth), written atomically
        stdout.log         the job's output streams, as they came
        stderr.log
        lock.yaml          the lockfile the image was built from (export and --rebuild need it)
        git.diff           the uncommitted changes of the project, when there were any
        origin.json        only in an imported run: the bundle or registry reference it came from
        code/              the project snapshot, pristine (what replay and export use)
        work/              the job's writable working copy, mounted at /work: created and changed files are outputs
        meta/              bootstrap reports and step traces, mounted at /envkit/meta
        output/            $ENVKIT_OUTPUT_DIR, mounted at /envkit/output: everything in it is an output

Outputs are recorded by path: a file in the working copy by its path there (``model.pt``), a file under the output
folder with the :data:`OUTPUT_PREFIX` (``$ENVKIT_OUTPUT_DIR/metrics.json``). :meth:`RunLayout.output_path` maps one
back to its file. Nothing outside this module spells these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from envkit.manifest import is_safe_relpath

RECORD = "record.json"
ORIGIN = "origin.json"  # written by import: where a run came from (not part of a bundle)
STDOUT_LOG = "stdout.log"
STDERR_LOG = "stderr.log"
LOCK_COPY = "lock.yaml"
GIT_DIFF = "git.diff"
CODE_DIR = "code"
WORK_DIR = "work"
META_DIR = "meta"
OUTPUT_DIR = "output"
OUTPUT_PREFIX = "$ENVKIT_OUTPUT_DIR/"

# What a bundle carries of a run folder (work/ only for its outputs; the rest of it is the code snapshot).
BUNDLE_FILES = (RECORD, STDOUT_LOG, STDERR_LOG, LOCK_COPY, GIT_DIFF)
BUNDLE_DIRS = (CODE_DIR, META_DIR, OUTPUT_DIR)
FIXED_NAMES = (*BUNDLE_FILES, *BUNDLE_DIRS, WORK_DIR, ORIGIN)  # never links, in a run folder of any origin


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder (nothing is created)."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / RECORD

    @property
    def origin(self) -> Path:
        return self.root / ORIGIN

    @property
    def stdout_log(self) -> Path:
        return self.root / STDOUT_LOG

    @property
    def stderr_log(self) -> Path:
        return self.root / STDERR_LOG

    @property
    def lock(self) -> Path:
        return self.root / LOCK_COPY

    @property
    def git_diff(self) -> Path:
        return self.root / GIT_DIFF

    @property
    def code(self) -> Path:
        return self.root / CODE_DIR

    @property
    def work(self) -> Path:
        return self.root / WORK_DIR

    @property
    def meta(self) -> Path:
        return self.root / META_DIR

    @property
    def output(self) -> Path:
        return self.root / OUTPUT_DIR

    def output_path(self, path: str) -> Path:
        """The file of an output recorded as ``path``.

        Raises:
            ValueError: ``path`` is not a safe relative path (a crafted record).
        """
        rel, folder = output_location(path)
        return (self.output if folder == OUTPUT_DIR else self.work) / rel


def output_location(path: str) -> tuple[str, str]:
    """``(relative path, folder name)`` of a recorded output: under ``output/`` or ``work/``.

    Raises:
        ValueError: the path escapes its folder or is malformed.
    """
    if path.startswith(OUTPUT_PREFIX):
        rel, folder = path[len(OUTPUT_PREFIX):], OUTPUT_DIR
    else:
        rel, folder = path, WORK_DIR
    if not is_safe_relpath(rel):
        raise ValueError(f"output path {path!r} is not a relative path inside the run folder")
    return rel, folder


def output_name(rel: str) -> str:
    """How a file under the output folder is recorded."""
    return OUTPUT_PREFIX + rel


def meta_files(path: Path, pattern: str) -> dict[str, Path]:
    """A run's files in ``meta`` matching ``pattern``, by name: ``path`` is one such file, a run's ``meta`` folder or
    the run folder itself."""
    path = Path(path)
    if path.is_file():
        return {path.name: path}
    folder = path / META_DIR if (path / META_DIR).is_dir() else path
    return {p.name: p for p in sorted(folder.glob(pattern)) if p.is_file()}
