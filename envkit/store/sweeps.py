"""The sweep store: one folder per sweep under ``<root>/sweeps/``, beside the runs, and the one owner of its paths.

::

    <root>/sweeps/<sweep_id>/
        sweep.json         the sweep record: the plan every seed runs, the seeds, each seed's run and state
        tasks/<index>.json what the process that runs seed number <index> reports (its run id as soon as the run
                           exists, then the outcome); exactly one writer per file, so parallel tasks never collide
        code/              the project snapshot every seed runs, taken once when the sweep starts
        git.diff           the project's uncommitted changes at that moment, when there were any
        lock.yaml          the lockfile the image came from, when there was one
        slurm/             the Slurm backend's array script, each task's log and its start and exit markers
        report.png         the report's plot, unless another path is asked for

Each seed's run is an ordinary run under ``<root>/runs/`` whose record names the sweep (``sweep``: id and index).
Sweep ids have the form of run ids (UTC time to the millisecond, 8 hex digits) and are validated before they touch
a path. Every file here is written atomically (:mod:`envkit.atomic`); a listing skips and reports a folder it
cannot read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.atomic import atomic_write
from envkit.errors import EnvkitError, StoreError, SweepError, SweepNotFoundError
from envkit.store.filestore import _HEX_RE, _PREFIX_RE, LAST, new_run_id
from envkit.store.record import RUN_ID_RE, CodeInfo, ImageInfo, LockInfo, _from_json, _to_json, utc_now

SWEEPS = "sweeps"
SWEEP_RECORD = "sweep.json"
TASKS_DIR = "tasks"
CODE_DIR = "code"
GIT_DIFF = "git.diff"
LOCK_COPY = "lock.yaml"
SLURM_DIR = "slurm"
PLOT = "report.png"

SCHEMA_VERSION = 1
BACKENDS = ("local", "slurm")
SWEEP_STATUSES = ("running", "succeeded", "failed", "interrupted")
# A seed's state: a run's own status once it has a record, else where the scheduler has it.
RUN_STATES = ("pending", "running", "succeeded", "failed", "interrupted", "oom", "abandoned", "cancelled", "lost")
FINISHED_STATES = frozenset({"succeeded", "failed", "interrupted", "oom", "abandoned", "cancelled", "lost"})
_ID_HINT = "sweep ids look like 20261130T101500123Z-3f9a1c2b; list them with `envkit sweeps`"


def validate_sweep_id(sweep_id: object) -> str:
    """``sweep_id`` when well formed.

    Raises:
        SweepError: quoting the bad id (shortened), before it is used in any path.
    """
    if not isinstance(sweep_id, str) or not RUN_ID_RE.fullmatch(sweep_id):
        shown = repr(sweep_id) if len(repr(sweep_id)) <= 60 else repr(sweep_id)[:57] + "..."
        raise SweepError(f"malformed sweep id {shown}", hint=_ID_HINT)
    return sweep_id


@dataclass
class SweepPlan:
    """What every seed of the sweep runs: a run's options without its seed (secrets in ``env`` are redacted)."""

    script: str
    args: list[str] = field(default_factory=list)
    argv: list[str] | None = None  # `-- COMMAND ARGS` instead of `python SCRIPT ARGS`
    image: ImageInfo = field(default_factory=ImageInfo)
    lock: LockInfo | None = None
    code: CodeInfo = field(default_factory=CodeInfo)  # the snapshot's hash and the project's git state (no files)
    determinism: str = "strict"
    threads: int = 1
    cpu_profile: str = "native"
    gpus: str = "none"
    trace: str = "off"
    network: str = "none"
    memory: str | None = None
    mounts: list[dict[str, str]] = field(default_factory=list)  # [{"source": host path, "target": container path}]
    env: dict[str, str] = field(default_factory=dict)
    project: str | None = None  # the folder the sweep was started from
    # The container settings the submitting host settled (envkit.run.container), the same for every seed.
    user: str | None = None
    shm_size: str | None = None
    ipc: str | None = None
    ulimits: dict[str, list[int]] = field(default_factory=dict)
    cuda: str | None = None  # the CUDA version the image needs (checked on each node before a GPU job)


@dataclass
class SweepRun:
    """One seed of the sweep and what became of it."""

    index: int
    seed: int
    state: str = "pending"  # one of RUN_STATES
    run_id: str | None = None
    exit_code: int | None = None
    node: str | None = None
    note: str | None = None


@dataclass
class SweepRecord:
    """A sweep: what was asked, and each seed's run."""

    sweep_id: str
    plan: SweepPlan
    seeds: list[int]
    runs: list[SweepRun]
    created: str = field(default_factory=utc_now)
    schema_version: int = SCHEMA_VERSION
    status: str = "running"
    finished: str | None = None
    command: list[str] = field(default_factory=list)
    base_seed: int | None = None  # --n N --base-seed B: the seeds were derived from B
    backend: str = "local"
    parallel: int = 1
    single: bool = False  # `envkit run --backend slurm`: one run, submitted as a sweep of one seed
    slurm: dict[str, Any] | None = None  # job_id and the options it was submitted with
    notes: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raises StoreError naming a bad field."""
        validate_sweep_id(self.sweep_id)
        for name, value, choices in (("status", self.status, SWEEP_STATUSES), ("backend", self.backend, BACKENDS)):
            if value not in choices:
                raise StoreError(f"sweep {self.sweep_id}: {name} is {value!r}, expected one of {', '.join(choices)}")
        if [r.index for r in self.runs] != list(range(len(self.seeds))) or [r.seed for r in self.runs] != self.seeds:
            raise StoreError(f"sweep {self.sweep_id}: its runs do not match its seeds")
        for run in self.runs:
            if run.state not in RUN_STATES or (run.run_id is not None and not RUN_ID_RE.fullmatch(run.run_id)):
                raise StoreError(f"sweep {self.sweep_id}: seed {run.seed} has a bad state or run id")

    def to_dict(self) -> dict[str, Any]:
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> SweepRecord:
        """Parse strictly (unknown keys, wrong types and unknown versions are StoreErrors naming the field)."""
        if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
            version = data.get("schema_version") if isinstance(data, dict) else None
            raise StoreError(f"{where} has schema version {version!r}; this envkit reads version {SCHEMA_VERSION}")
        record = _from_json(cls, data, where)
        record.validate()
        return record


@dataclass(frozen=True)
class SweepLayout:
    """The paths of one sweep's folder (nothing is created)."""

    root: Path

    @property
    def record(self) -> Path:
        return self.root / SWEEP_RECORD

    @property
    def tasks(self) -> Path:
        return self.root / TASKS_DIR

    def task(self, index: int) -> Path:
        return self.tasks / f"{int(index)}.json"

    @property
    def code(self) -> Path:
        return self.root / CODE_DIR

    @property
    def git_diff(self) -> Path:
        return self.root / GIT_DIFF

    @property
    def lock(self) -> Path:
        return self.root / LOCK_COPY

    @property
    def slurm(self) -> Path:
        return self.root / SLURM_DIR

    @property
    def plot(self) -> Path:
        return self.root / PLOT


class SweepStore:
    """Sweeps in the run store's folder (``FileStore.root``)."""

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    @property
    def sweeps_dir(self) -> Path:
        return self.root / SWEEPS

    def layout(self, sweep_id: str) -> SweepLayout:
        """Every path of a sweep's folder. Raises SweepError for a malformed id."""
        return SweepLayout(self.sweeps_dir / validate_sweep_id(sweep_id))

    def resolve(self, ref: str) -> str:
        """The sweep id ``ref`` names: a full id, ``last`` (the newest sweep), a unique prefix of an id
        (``20261130T2328``) or of at least 4 of its 8 hex digits, as run ids are resolved.

        Raises:
            SweepError: characters no sweep id has, or several sweeps match (named). SweepNotFoundError: none does.
        """
        if isinstance(ref, str) and RUN_ID_RE.fullmatch(ref):
            return ref
        try:
            ids = sorted((n for n in os.listdir(self.sweeps_dir) if RUN_ID_RE.fullmatch(n)), reverse=True)
        except FileNotFoundError:
            ids = []
        except OSError as exc:
            raise StoreError(f"cannot list {self.sweeps_dir}: {exc.strerror}") from exc
        if ref == LAST:
            if not ids:
                raise SweepNotFoundError(f"no sweeps in {self.root} yet, so no last sweep")
            return ids[0]
        if not isinstance(ref, str) or not _PREFIX_RE.fullmatch(ref):
            validate_sweep_id(ref)  # raises, quoting it
        hex_part = bool(_HEX_RE.fullmatch(ref))
        found = [i for i in ids if i.startswith(ref) or (hex_part and i[20:].startswith(ref))]
        if not found:
            raise SweepNotFoundError(f"no sweep matches {ref!r} in {self.root}")
        if len(found) > 1:
            shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
            raise SweepError(f"sweep id {ref!r} matches {len(found)} sweeps: {shown}",
                             hint="give more of the sweep id (`envkit sweeps` lists them)")
        return found[0]

    def create(self) -> str:
        """A new sweep id with its folder (and tasks/) created, unique among concurrent processes."""
        try:
            self.sweeps_dir.mkdir(parents=True, exist_ok=True)
            while True:
                sweep_id = new_run_id()
                try:
                    (self.sweeps_dir / sweep_id).mkdir()
                except FileExistsError:
                    continue
                self.layout(sweep_id).tasks.mkdir()
                return sweep_id
        except OSError as exc:
            raise StoreError(f"cannot create a sweep in {self.sweeps_dir}: {exc.strerror or exc}") from exc

    def write(self, record: SweepRecord) -> None:
        """Write the sweep record atomically. Raises StoreError (the previous record is intact)."""
        record.validate()
        path = self.layout(record.sweep_id).record
        try:
            atomic_write(path, json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n", self.durable)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def read(self, sweep_id: str) -> SweepRecord:
        """The sweep record.

        Raises:
            SweepError: malformed id. SweepNotFoundError: no such sweep. StoreError: unreadable or invalid.
        """
        layout = self.layout(sweep_id)
        try:
            raw = layout.record.read_bytes()
        except FileNotFoundError:
            raise SweepNotFoundError(f"no sweep {sweep_id} in {self.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {layout.record}: {exc.strerror or exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise StoreError(f"{layout.record} is not valid JSON ({exc})", hint=f"inspect or remove {layout.root}") \
                from exc
        record = SweepRecord.from_dict(data, f"sweep {sweep_id}")
        if record.sweep_id != sweep_id:
            raise StoreError(f"the record in {layout.root} names another sweep ({record.sweep_id})")
        return record

    def list(self) -> tuple[list[SweepRecord], list[tuple[str, str]]]:
        """Sweeps newest first, and ``(folder name, why)`` for each folder skipped."""
        try:
            names = sorted(os.listdir(self.sweeps_dir), reverse=True)
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise StoreError(f"cannot list {self.sweeps_dir}: {exc.strerror}") from exc
        records, broken = [], []
        for name in names:
            if name.startswith("."):
                continue
            if not RUN_ID_RE.fullmatch(name):
                broken.append((name, "not a sweep id"))
                continue
            try:
                records.append(self.read(name))
            except EnvkitError as exc:
                broken.append((name, exc.message))
        return records, broken

    def write_task(self, sweep_id: str, index: int, data: dict[str, Any]) -> None:
        """Report on one seed (``run_id``, ``status``, ``error``...); its only writer is the process running it."""
        path = self.layout(sweep_id).task(index)
        try:
            atomic_write(path, json.dumps(data, sort_keys=True) + "\n", self.durable)
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def read_task(self, sweep_id: str, index: int) -> dict[str, Any]:
        """What the process running seed ``index`` reported; ``{}`` when nothing (yet) or unreadable."""
        try:
            data = json.loads(self.layout(sweep_id).task(index).read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}
