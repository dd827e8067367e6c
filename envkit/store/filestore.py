"""The file store: one folder per run under ``<root>/runs/``, a record written atomically, a fast listing.

Layout::

    <root>/runs/<run_id>/                one folder per run; envkit.store.layout names everything in it
    <root>/index.jsonl                   one summary line per record write (a cache, see below)
    <root>/probes/<key>.json             the in-container software probe, cached per image, CPU and environment

Run ids are validated by a regular expression before they touch a path. A record is written to a temporary file in
its run folder, fsynced and renamed over ``record.json``, so a reader sees the old record or the new one, never half.

Listing 10,000 runs must take well under half a second, and opening 10,000 records does not. So every write appends
a one-line summary to ``index.jsonl`` (one ``write`` call on an ``O_APPEND`` file, which concurrent writers on one
host cannot interleave; on a filesystem shared by several hosts, NFS among them, ``O_APPEND`` is not atomic between
hosts, so appends and compactions also hold a POSIX lock on ``index.lock``), keyed by the record file's inode, size
and mtime. A listing stats each ``record.json`` and uses the
summary when the key matches; a record whose key does not match (a crash between rename and append, a record written
by hand, a lost or damaged index) is read in full and its summary appended again. The index is only ever a cache.
Its lines are ``1<TAB>run id<TAB>ino:size:mtime_ns<TAB>summary JSON``: the summary is kept as text, so `envkit runs
--json` prints it without parsing and re-encoding 10,000 objects.

Several hosts may share one store (``ENVKIT_HOME`` on NFS, as on a cluster): run ids are reserved with an exclusive
``mkdir``, which the server decides for all clients; records are replaced by ``rename``, atomic on the server; the
index is locked as above, and stays a cache (a host that cannot lock, or a line lost anyway, costs a full read of
that record once).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from envkit.atomic import atomic_write
from envkit.errors import (
    AmbiguousRunIdError,
    EnvkitError,
    InvalidRunIdError,
    RunNotFoundError,
    StoreError,
)
from envkit.settings import ENV_HOME
from envkit.store.layout import RECORD, RunLayout
from envkit.store.record import RUN_ID_RE, RunRecord

RUNS = "runs"
INDEX = "index.jsonl"
INDEX_LOCK = "index.lock"
PROBES = "probes"
_INDEX_VERSION = "1"
_PROBE_KEY_RE = re.compile(r"[0-9a-f]{16,64}")
LAST = "last"  # the newest run, wherever a run id is taken
_PREFIX_RE = re.compile(r"[0-9TZa-f-]{1,28}")  # only characters a run id has: nothing else may reach a path
_HEX_RE = re.compile(r"[0-9a-f]{4,8}")  # the random part alone (as `docker ps` shows a short id)
_CREATE_TRIES = 64  # a fresh random part each time: more than one clash in a row means something else is wrong
_LOCK_WAIT_S = 2.0  # the index is a cache: past this, write without the lock rather than hold a run up


def process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (with its pid, it names the process even after reuse)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def abandoned(record: RunRecord) -> bool:
    """A ``running`` record whose envkit process, on this host, is gone (killed, crashed): it will never finish."""
    if record.status != "running" or record.host_pid is None:
        return False
    if (record.fingerprint.host or {}).get("hostname") != socket.gethostname():
        return False  # another host's run (a shared store): its process is not ours to judge
    return process_start(record.host_pid) != record.host_pid_start


def _mark_abandoned(record: RunRecord) -> RunRecord:
    if abandoned(record):
        record.status = "abandoned"
        record.notes.append(f"the envkit process {record.host_pid} that ran it is gone; the run never finished")
    return record


def new_run_id(now: datetime | None = None) -> str:
    """A run id that sorts by creation time: UTC time to the millisecond, then 32 random bits.

    Two runs started in the same millisecond differ in the random part; :meth:`FileStore.create_run` also reserves
    the id with an exclusive ``mkdir``, so even a collision cannot hand one id to two runs.
    """
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def validate_run_id(run_id: object) -> str:
    """Return ``run_id`` when it is well formed.

    Raises:
        InvalidRunIdError: quoting the bad id (shortened), before it is used in any path.
    """
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        shown = repr(run_id) if len(repr(run_id)) <= 60 else repr(run_id)[:57] + "..."
        raise InvalidRunIdError(f"malformed run id {shown}")
    return run_id


@dataclass(frozen=True)
class RunSummary:
    """What a listing shows of a run."""

    run_id: str
    created: str
    status: str
    seed: int | None
    determinism: str
    script: str | None
    exit_code: int | None
    duration_s: float | None
    image_id: str | None
    replay_of: str | None

    @classmethod
    def from_record(cls, record: RunRecord) -> RunSummary:
        t = record.timings
        return cls(run_id=record.run_id, created=record.created, status=record.status, seed=record.seed,
                   determinism=record.determinism, exit_code=record.exit_code,
                   script=record.script if record.script or not record.argv else " ".join(record.argv)[:120],
                   duration_s=t.total_s if t.total_s is not None else t.run_s, image_id=record.image.id,
                   replay_of=record.replay_of)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SUMMARY_FIELDS}

    def to_json(self) -> str:
        """One line of JSON (control characters escaped, so never a raw tab or newline)."""
        return json.dumps(self.to_dict(), sort_keys=True)


_SUMMARY_FIELDS = tuple(f.name for f in fields(RunSummary))
_SUMMARY_KEYS = frozenset(_SUMMARY_FIELDS)


@dataclass(frozen=True)
class BrokenRun:
    """A folder under ``runs/`` that a listing skipped, and why."""

    name: str
    reason: str


class Listing:
    """The result of :meth:`FileStore.list`: runs newest first, and the folders skipped."""

    def __init__(self, summaries_json: list[str], rows: list[dict[str, Any]], broken: list[BrokenRun]) -> None:
        self.summaries_json = summaries_json  # each run's summary as one line of JSON, ready to print
        self.rows = rows  # the same, parsed
        self.broken = broken

    @property
    def runs(self) -> list[RunSummary]:
        return [RunSummary(**row) for row in self.rows]


class FileStore:
    """Run records on the local filesystem.

    Args:
        root: the store folder (``envkit.settings.store_dir()``).
        durable: fsync records and their folder before returning; only benchmarks that fill a store turn it off.
    """

    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.durable = durable

    @property
    def runs_dir(self) -> Path:
        return self.root / RUNS

    @property
    def index_path(self) -> Path:
        return self.root / INDEX

    def run_dir(self, run_id: str) -> Path:
        """The folder of a run (not created). Raises InvalidRunIdError for a malformed id."""
        return self.runs_dir / validate_run_id(run_id)

    def layout(self, run_id: str) -> RunLayout:
        """Every path of a run's folder (nothing is created). Raises InvalidRunIdError for a malformed id."""
        return RunLayout(self.run_dir(run_id))

    def resolve(self, ref: str) -> str:
        """The run id that ``ref`` names: a full id, ``last`` (the newest run, replays included), a unique prefix
        of an id (``20261123T2009``), or a unique prefix of at least 4 of the 8 hex digits after the dash.

        Raises:
            InvalidRunIdError: ``ref`` has characters no run id has (checked before it touches a path).
            RunNotFoundError: nothing matches. AmbiguousRunIdError: several runs match (all are named, up to 6).
        """
        if isinstance(ref, str) and RUN_ID_RE.fullmatch(ref):
            return ref
        if ref == LAST:
            ids = sorted(self.run_ids(), reverse=True)
            newest = next((i for i in ids if (self.runs_dir / i / RECORD).is_file()), None)
            if newest is None:
                raise RunNotFoundError(f"no runs in {self.root} yet, so no last run")
            return newest
        if not isinstance(ref, str) or not _PREFIX_RE.fullmatch(ref):
            validate_run_id(ref)  # raises InvalidRunIdError quoting it
        hex_part = bool(_HEX_RE.fullmatch(ref))
        found = sorted((i for i in self.run_ids() if i.startswith(ref) or (hex_part and i[20:].startswith(ref))),
                       reverse=True)  # newest first
        if not found:
            raise RunNotFoundError(f"no run matches {ref!r} in {self.root}")
        if len(found) > 1:
            shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
            raise AmbiguousRunIdError(f"run id {ref!r} matches {len(found)} runs: {shown}")
        return found[0]

    def run_ids(self) -> list[str]:
        """The ids of the run folders, unsorted (cheap: one directory listing)."""
        try:
            return [n for n in os.listdir(self.runs_dir) if RUN_ID_RE.fullmatch(n)]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {self.runs_dir}: {exc.strerror}") from exc

    def read_probe(self, key: str) -> dict[str, Any] | None:
        """A cached in-container probe result, or None (missing or unreadable: probe again)."""
        if not _PROBE_KEY_RE.fullmatch(key):
            raise ValueError(f"malformed probe key {key!r}")
        try:
            data = json.loads((self.root / PROBES / f"{key}.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def write_probe(self, key: str, data: dict[str, Any]) -> None:
        """Cache a probe result (best effort: a store that cannot hold it only costs a probe next time)."""
        if not _PROBE_KEY_RE.fullmatch(key):
            raise ValueError(f"malformed probe key {key!r}")
        try:
            (self.root / PROBES).mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / PROBES / f"{key}.json", json.dumps(data, sort_keys=True), durable=False)
        except OSError:
            pass

    def create_run(self, now: datetime | None = None) -> str:
        """A new run id with its folder created, unique even among concurrent processes."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            for _ in range(_CREATE_TRIES):
                run_id = new_run_id(now)
                try:
                    (self.runs_dir / run_id).mkdir()  # exclusive, also between the hosts of a shared filesystem
                    return run_id
                except FileExistsError:
                    continue
        except OSError as exc:
            raise _write_error(exc, self.runs_dir, self.root) from exc
        raise StoreError(f"cannot reserve a new run id in {self.runs_dir}: {_CREATE_TRIES} fresh ids were all taken",
                         hint="the store's filesystem does not report folder creation faithfully; use another")

    def write(self, record: RunRecord) -> Path:
        """Write (or overwrite) a run's record atomically and return its path.

        Raises:
            StoreError: disk full, read-only filesystem, no permission; the previous record, if any, is intact and
                no temporary file is left behind.
        """
        record.validate()
        run_dir = self.run_dir(record.run_id)
        path = run_dir / RECORD
        data = (json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, self.durable)
            st = os.stat(path)
        except OSError as exc:
            raise _write_error(exc, path, self.root) from exc
        self._append_index([_index_line(record.run_id, _key(st), RunSummary.from_record(record).to_json())])
        return path

    def read(self, run_id: str) -> RunRecord:
        """The record of a run.

        Raises:
            InvalidRunIdError: malformed id. RunNotFoundError: no such run. StoreError: the record is missing,
                unreadable, not JSON, or not a valid record.
        """
        return _mark_abandoned(self._load(validate_run_id(run_id))[0])

    def list(self, limit: int | None = None) -> Listing:
        """Runs newest first (at most ``limit``); folders that are not readable runs are reported, not fatal."""
        try:
            names = os.listdir(self.runs_dir)
        except FileNotFoundError:
            return Listing([], [], [])
        except OSError as exc:
            raise StoreError(f"cannot list {self.runs_dir}: {exc.strerror}") from exc
        ids, broken = [], []
        for name in names:
            if RUN_ID_RE.fullmatch(name):
                ids.append(name)
            elif not name.startswith("."):
                broken.append(BrokenRun(name, "not a run id"))
        ids.sort(reverse=True)
        if limit:
            ids = ids[:limit]
        cached, lines = self._read_index()
        texts: list[str] = []
        rows: list[dict[str, Any]] = []
        fresh: list[bytes] = []
        runs_dir = str(self.runs_dir)
        for run_id in ids:
            try:
                st = os.stat(f"{runs_dir}/{run_id}/{RECORD}")
            except FileNotFoundError:
                broken.append(BrokenRun(run_id, f"no {RECORD} (the run stopped before it was recorded)"))
                continue
            except OSError as exc:
                broken.append(BrokenRun(run_id, f"cannot stat {RECORD}: {exc.strerror}"))
                continue
            hit = cached.get(run_id)
            if hit is not None and hit[0] == _key(st):
                texts.append(hit[1])
                rows.append(hit[2])
                continue
            try:
                record, st = self._load(run_id)
            except EnvkitError as exc:
                broken.append(BrokenRun(run_id, exc.message))
                continue
            summary = RunSummary.from_record(record)
            texts.append(summary.to_json())
            rows.append(summary.to_dict())
            fresh.append(_index_line(run_id, _key(st), texts[-1]))
        if limit is None and lines > 2 * len(ids) + 1000:
            self._compact(ids, fresh)
        elif fresh:
            self._append_index(fresh)
        self._show_abandoned(texts, rows)
        return Listing(texts, rows, broken)

    def _show_abandoned(self, texts: list[str], rows: list[dict[str, Any]]) -> None:
        """Runs still `running` whose envkit process is gone are listed as `abandoned` (only those few are read)."""
        for i, row in enumerate(rows):
            if row["status"] != "running":
                continue
            try:
                record = self._load(row["run_id"])[0]
            except EnvkitError:
                continue
            if abandoned(record):
                rows[i] = {**row, "status": "abandoned"}
                texts[i] = json.dumps(rows[i], sort_keys=True)

    # --- internals --------------------------------------------------------------------------------------------------
    def _load(self, run_id: str) -> tuple[RunRecord, os.stat_result]:
        run_dir = self.runs_dir / run_id
        try:
            with open(run_dir / RECORD, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            if run_dir.is_dir():
                raise StoreError(f"run {run_id} has no record ({run_dir / RECORD} is missing)",
                                 hint="the run stopped before it was recorded; its folder can be removed") from None
            raise RunNotFoundError(f"no run {run_id} in {self.root}") from None
        except OSError as exc:
            raise StoreError(f"cannot read the record of run {run_id}: {exc.strerror}") from exc
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise StoreError(f"the record of run {run_id} is not valid JSON ({exc})",
                             hint=f"inspect or remove {run_dir}") from exc
        record = RunRecord.from_dict(data)
        if record.run_id != run_id:
            raise StoreError(f"the record in {run_dir} names another run ({record.run_id})")
        return record, st

    def _read_index(self) -> tuple[dict[str, tuple[str, str, dict[str, Any]]], int]:
        """``{run_id: (key, summary JSON, summary)}`` (the last line for a run wins) and the number of lines."""
        try:
            text = self.index_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return {}, 0
        lines = text.split("\n")
        entries = []
        for line in lines[:-1]:  # the piece after the last newline is empty, or a line torn by a failed append
            parts = line.split("\t")
            # A torn line glued to the next one has more tabs (JSON escapes them inside strings) or a bad version.
            if len(parts) == 4 and parts[0] == _INDEX_VERSION:
                entries.append(parts)
        try:
            parsed = json.loads("[" + ",".join(p[3] for p in entries) + "]")  # one parse for all: much faster
        except (ValueError, RecursionError):
            parsed = [_loads_or_none(p[3]) for p in entries]
        cached = {}
        for parts, row in zip(entries, parsed, strict=True):
            if isinstance(row, dict) and row.keys() == _SUMMARY_KEYS:
                cached[parts[1]] = (parts[2], parts[3], row)
        return cached, len(lines) - 1

    def _append_index(self, lines: list[bytes]) -> None:
        # Best effort: a failed append only costs the next listing a full read of these records.
        with self._index_locked():
            try:
                fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, b"".join(lines))
                finally:
                    os.close(fd)
            except OSError:
                pass

    def _compact(self, ids: list[str], fresh: list[bytes]) -> None:
        """Rewrite an index grown long with superseded lines: the last line of each run that still has a folder.

        The index is read again under the lock, so that lines other writers appended since the listing began stay.
        """
        listed = set(ids)
        with self._index_locked():
            cached, _ = self._read_index()
            fresh_ids = {line.split(b"\t", 2)[1].decode() for line in fresh}
            kept = [_index_line(i, *entry[:2]) for i, entry in sorted(cached.items())
                    if i not in fresh_ids and (i in listed or (self.runs_dir / i).is_dir())]
            try:
                atomic_write(self.index_path, b"".join(kept + fresh), durable=False)
            except OSError:
                pass

    @contextlib.contextmanager
    def _index_locked(self) -> Iterator[None]:
        """Hold the index's lock (a POSIX lock on index.lock, which NFS passes to the server) for a moment.

        Waits at most :data:`_LOCK_WAIT_S`; a filesystem without locks, or a lock held too long (a host that died
        holding it, before the server noticed), lets the write go ahead unlocked: the index is only a cache.
        """
        try:
            fd = os.open(self.root / INDEX_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            deadline = time.monotonic() + _LOCK_WAIT_S
            for _ in range(10_000):
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        break
                    time.sleep(0.002)
            yield
        finally:
            os.close(fd)  # releases the lock


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _key(st: os.stat_result) -> str:
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _index_line(run_id: str, key: str, summary_json: str) -> bytes:
    return f"{_INDEX_VERSION}\t{run_id}\t{key}\t{summary_json}\n".encode()


def _write_error(exc: OSError, path: Path, root: Path) -> StoreError:
    elsewhere = f"or set {ENV_HOME} to a folder on another disk"
    hints = {
        errno.ENOSPC: f"the disk holding {root} is full: free some space, {elsewhere}",
        errno.EDQUOT: f"your disk quota is used up: free some space, {elsewhere}",
        errno.EROFS: f"{root} is on a read-only filesystem: set {ENV_HOME} to a writable folder",
        errno.EACCES: f"you may not write to {root}: fix its permissions, or set {ENV_HOME} to a folder of yours",
        errno.EPERM: f"you may not write to {root}: fix its permissions, or set {ENV_HOME} to a folder of yours",
    }
    return StoreError(f"cannot write {path}: {exc.strerror or exc}", hint=hints.get(exc.errno or 0))
