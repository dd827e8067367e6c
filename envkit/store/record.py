"""The run record: one JSON document per run, strict and versioned.

Reading is strict: unknown keys and wrong types are errors that name the field, and a record of an unknown schema
version says so instead of being half-understood. To extend the record, add a field with a default to the dataclass
(records written before still read); to change or remove one, bump :data:`SCHEMA_VERSION` and add an upgrade
function to ``_UPGRADES`` that turns the previous version's dict into the new one.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from envkit.errors import StoreError, shown
from envkit.manifest import ManifestEntry, is_safe_relpath
from envkit.settings import CPU_PROFILES, DEFAULT_CPU_PROFILE, DEFAULT_DETERMINISM, DEFAULT_THREADS, DETERMINISM_LEVELS
from envkit.store.layout import OUTPUT_PREFIX, STDERR_LOG, STDOUT_LOG
from envkit.store.redact import (  # noqa: F401 - REDACTED and redact_environment: re-exported for callers
    REDACTED,
    redact_argv,
    redact_environment,
    redaction_note,
)

SCHEMA_VERSION = 1
STATUSES = ("running", "succeeded", "failed", "interrupted", "oom", "abandoned")
RUN_ID_PATTERN = r"[0-9]{8}T[0-9]{9}Z-[0-9a-f]{8}"  # UTC time to the millisecond, then 32 random bits
RUN_ID_RE = re.compile(RUN_ID_PATTERN)

# version -> function turning a record dict of that version into one of the next version.
_UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string with milliseconds (``2026-11-23T19:13:00.123Z``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class ImageInfo:
    id: str | None = None  # sha256:... image ID (content-addressed config)
    digest: str | None = None  # registry digest (repo@sha256:...) when the image was pushed or pulled
    digests: list[str] = field(default_factory=list)  # every registry digest the engine knows for it
    ref: str | None = None  # the tag or reference the user gave


@dataclass
class LockInfo:
    path: str | None = None
    sha256: str | None = None
    name: str | None = None


@dataclass
class CodeInfo:
    sha256: str | None = None  # manifest_sha256 of the snapshot
    git_commit: str | None = None
    git_dirty: bool | None = None
    diff_sha256: str | None = None
    files: list[ManifestEntry] = field(default_factory=list)


@dataclass
class Logs:
    """Where the logs are, relative to the run's folder: informational; envkit reads them through RunLayout."""

    stdout: str = STDOUT_LOG
    stderr: str = STDERR_LOG


@dataclass
class Timings:
    build_s: float | None = None
    run_s: float | None = None
    total_s: float | None = None


@dataclass
class Fingerprint:
    """Sections as made by :func:`envkit.fingerprint.host_fingerprint` plus the in-container probe's report."""

    schema_version: int | None = None
    host: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] | None = None
    gpus: dict[str, Any] = field(default_factory=dict)
    container: dict[str, Any] | None = None


@dataclass
class Upstream:
    """An input taken from an earlier run's output (``envkit run --input RUN:PATH[:DEST]``): the lineage link."""

    run_id: str  # the run that wrote it
    path: str  # its output path in that run (a file, or a folder of outputs)
    target: str  # where this run's job saw it (read-only)
    sha256: str  # the file's sha256, or the manifest hash of the folder's files
    size: int = 0


@dataclass
class RunRecord:
    """Everything known about one run. ``environment``, ``command`` and ``args`` are redacted on construction
    (:mod:`envkit.store.redact`), with a note saying what was, so no secret reaches disk."""

    run_id: str
    created: str = field(default_factory=utc_now)
    status: str = "running"
    schema_version: int = SCHEMA_VERSION
    started: str | None = None
    finished: str | None = None
    command: list[str] = field(default_factory=list)  # the envkit command line as typed
    script: str | None = None
    args: list[str] = field(default_factory=list)  # the script's arguments
    seed: int | None = None
    determinism: str = DEFAULT_DETERMINISM
    threads: int = DEFAULT_THREADS
    cpu_profile: str = DEFAULT_CPU_PROFILE
    environment: dict[str, str] = field(default_factory=dict)
    image: ImageInfo = field(default_factory=ImageInfo)
    lock: LockInfo | None = None
    code: CodeInfo = field(default_factory=CodeInfo)
    inputs: list[ManifestEntry] = field(default_factory=list)
    outputs: list[ManifestEntry] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    exit_code: int | None = None
    timings: Timings = field(default_factory=Timings)
    fingerprint: Fingerprint = field(default_factory=Fingerprint)
    bootstrap: list[dict[str, Any]] = field(default_factory=list)  # one report per seeded Python process
    replay_of: str | None = None
    platform_mismatch: bool = False
    notes: list[str] = field(default_factory=list)
    mounts: list[dict[str, str]] = field(default_factory=list)  # [{"source": host path, "target": container path}]
    trace: str = "off"  # what the job traced: off | auto | N, steps:A-B, ops:K ... (envkit.run.tracing)
    memory: str | None = None  # container memory limit
    verdict: dict[str, Any] | None = None  # replays: IDENTICAL / DIVERGED / FAILED and the evidence
    network: str = "none"  # the container's network: none or bridge
    user: str | None = None  # uid:gid the job ran as
    # Container settings (envkit.run.container, envkit.run.gpus); a replay uses them. None: an older record.
    gpus: str = "none"  # the GPU request: all, none, N or device=ID,...
    shm_size: str | None = None  # /dev/shm size (docker syntax); None with --ipc host
    ipc: str | None = None  # private | shareable | host
    ulimits: dict[str, list[int]] = field(default_factory=dict)  # name -> [soft, hard]; -1 = unlimited
    user_explicit: bool = False  # the user came from --user (a replay keeps it), not from envkit's default rule
    env_file: str | None = None  # --env-file, absolute: a replay reads the variables redacted here from it again
    host_pid: int | None = None  # the envkit process that ran it, and that process's start time (clock ticks):
    host_pid_start: int | None = None  # a `running` record whose process is gone was abandoned
    argv: list[str] = field(default_factory=list)  # the job's command in the container (`python SCRIPT ARGS` or
    #                                                 the COMMAND of `envkit run -- COMMAND`); empty in old records
    world_size: int | None = None  # torch.distributed world size seen by the job's processes (1: not distributed)
    processes: int | None = None  # Python processes the bootstrap seeded (one report each)
    upstream: list[Upstream] = field(default_factory=list)  # inputs taken from earlier runs' outputs
    pin_for: list[str] = field(default_factory=list)  # a pin run: [A, B], the runs whose parting it reruns
    metrics: dict[str, float] | None = None  # the job's metrics.json (envkit.store.metrics); None: it wrote none
    sweep: dict[str, Any] | None = None  # {"id": sweep id, "index": i} for one seed of a sweep (envkit.store.sweeps)
    scheduler: dict[str, str] | None = None  # a batch scheduler's ids: backend, job and array task ids, node

    def __post_init__(self) -> None:
        before, command, args, argv = self.environment, self.command, self.args, self.argv
        self.environment = redact_environment(before)
        self.command, self.args, self.argv = redact_argv(command), redact_argv(args), redact_argv(argv)
        note = redaction_note(self.environment, before, self.command != command,
                              self.args != args or self.argv != argv)
        if note:  # redaction is idempotent: a record read again adds no second note
            self.notes = [*self.notes, note]
        self.validate()

    def validate(self) -> None:
        """Check the values that have a fixed set of choices.

        Raises:
            StoreError: naming the field and the bad value.
        """
        _check_choice(self, "status", self.status, STATUSES)
        _check_choice(self, "determinism", self.determinism, DETERMINISM_LEVELS)
        _check_choice(self, "cpu_profile", self.cpu_profile, CPU_PROFILES)
        if not RUN_ID_RE.fullmatch(self.run_id):
            raise StoreError(f"record has a malformed run id {self.run_id!r}")
        if self.replay_of is not None and not RUN_ID_RE.fullmatch(self.replay_of):
            raise StoreError(f"record {self.run_id}: malformed replay_of {self.replay_of!r}")
        for link in self.upstream:  # a record from elsewhere must not name a path outside a store through these
            if not RUN_ID_RE.fullmatch(link.run_id) or not is_safe_relpath(link.path.removeprefix(OUTPUT_PREFIX)):
                raise StoreError(f"record {self.run_id}: malformed upstream link {shown(link.run_id)} "
                                 f"{shown(link.path)}")

    @property
    def job_argv(self) -> list[str]:
        """The command the job ran in its container (records older than ``argv``: ``python SCRIPT ARGS``)."""
        return list(self.argv) if self.argv else ["python", self.script or "", *self.args]
        if any(not isinstance(i, str) or not RUN_ID_RE.fullmatch(i) for i in self.pin_for):
            raise StoreError(f"record {self.run_id}: malformed pin_for {self.pin_for!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (manifest entries without ``link`` when they have none)."""
        return _to_json(self)

    @classmethod
    def from_dict(cls, data: Any) -> RunRecord:
        """Parse a record dict strictly, upgrading older schema versions.

        Raises:
            StoreError: unknown schema version, unknown or missing keys, wrong types, bad values.
        """
        if not isinstance(data, dict):
            raise StoreError(f"a run record must be a JSON object, not {type(data).__name__}")
        version = data.get("schema_version")
        run_id = data.get("run_id", "?")
        where = f"record {run_id if isinstance(run_id, str) and RUN_ID_RE.fullmatch(run_id) else shown(run_id)}"
        if not isinstance(version, int) or isinstance(version, bool):
            raise StoreError(f"{where} has no valid schema_version ({shown(version)})")
        if version > SCHEMA_VERSION or (version < SCHEMA_VERSION and version not in _UPGRADES):
            raise StoreError(
                f"{where} has schema version {version}; this envkit reads version {SCHEMA_VERSION}",
                hint="use the envkit version that wrote it, or upgrade envkit" if version > SCHEMA_VERSION else None,
            )
        while version < SCHEMA_VERSION:
            data = _UPGRADES[version](dict(data))
            version = data["schema_version"]
        return _from_json(cls, data, where)


def _check_choice(record: RunRecord, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise StoreError(f"record {record.run_id}: {name} is {value!r}, expected one of {', '.join(choices)}")


# --- strict (de)serialisation of nested dataclasses, driven by the type hints ---------------------------------------
def _to_json(obj: Any) -> Any:
    if isinstance(obj, ManifestEntry):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [_to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_json(v) for k, v in obj.items()}
    return obj


def _from_json(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise StoreError(f"{where} must be an object, not {type(data).__name__}")
    if not all(isinstance(k, str) for k in data):
        raise StoreError(f"{where} has keys that are not strings")
    hints, fields = _schema(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise StoreError(f"{where} has unknown keys: {', '.join(map(_key, unknown))}",
                         hint="it was written by a newer envkit, or edited by hand")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise StoreError(f"{where} lacks keys: {', '.join(missing)}")
    values = {name: _convert(value, hints[name], f"{where}: {name}") for name, value in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise StoreError(f"{where}: {exc}") from exc


@functools.cache
def _schema(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field[Any]]]:
    """Type hints and fields of a record dataclass (resolving hints is slow; a listing may read thousands)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the type hint ``tp`` (nested dataclasses built); StoreError when it does not fit."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        # Every union in the record is `X | None`: None passes, anything else must fit X (whose error is precise).
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if tp is type(None):
        if value is None:
            return None
    elif tp is ManifestEntry:
        if isinstance(value, dict) and {"path", "size", "sha256"} <= set(value) <= {"path", "size", "sha256", "link"}:
            entry = ManifestEntry(**value)
            if (isinstance(entry.path, str) and isinstance(entry.size, int) and isinstance(entry.sha256, str)
                    and isinstance(entry.link, (str, type(None)))):
                return entry
        raise StoreError(f"{where}: expected a manifest entry {{path, size, sha256[, link]}}, got {shown(value)}")
    elif dataclasses.is_dataclass(tp):
        return _from_json(tp, value, where)
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            _, item = typing.get_args(tp)
            return {k: _convert(v, item, f"{where}.{_key(k)}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this function was not taught
        raise TypeError(f"no conversion for {tp!r}")
    expected = getattr(tp, "__name__", str(tp))
    raise StoreError(f"{where}: expected {expected}, got {type(value).__name__} {shown(value)}")


def _key(key: str) -> str:
    """A key from a record for a message: plain when it is a plain name, else quoted (one line, escapes shown)."""
    return key if key.isidentifier() else shown(key)
