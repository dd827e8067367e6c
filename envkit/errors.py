"""The one error tree of envkit.

Every error a user can cause or meet derives from :class:`EnvkitError`. Each class carries the process exit code the
CLI returns for it and an optional hint that says what to do. The CLI's single error boundary (``envkit.cli.main``)
prints ``error: <message>`` and ``hint: <hint>`` and exits with ``exit_code``; nothing else calls ``sys.exit``.

Exit codes are distinct per class so that scripts can tell failures apart. They are part of the public interface:
the table in README.md lists them, and a test checks that no two classes share one.
"""

from __future__ import annotations

import reprlib
from typing import Any

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 80
_repr.maxlevel = 2


def shown(value: Any) -> str:
    """``value`` quoted for an error message: a short ``repr`` on one line, even for a huge or deeply nested value
    (``repr`` escapes newlines and escape sequences; reprlib stops at depth and length limits)."""
    return _repr.repr(value)


class EnvkitError(Exception):
    """Root of every envkit error."""

    exit_code = 1
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def __str__(self) -> str:
        return self.message


# --- input files -------------------------------------------------------------------------------------------------
class SpecError(EnvkitError):
    """The spec (envkit.yaml) is malformed, has unknown keys or bad values."""

    exit_code = 10


class LockfileError(EnvkitError):
    """The lockfile is malformed, of an unknown schema version, or lacks a hash."""

    exit_code = 11


class ResolveError(EnvkitError):
    """The requirements cannot be resolved for the target platform."""

    exit_code = 12


class HashMismatchError(EnvkitError):
    """A downloaded or cached file does not match the hash the lock pins."""

    exit_code = 13


class FetchError(EnvkitError):
    """A pinned file could not be fetched from its recorded location."""

    exit_code = 14


class ProjectConfigError(EnvkitError):
    """The project's configuration ([tool.envkit] in pyproject.toml, or envkit.toml) is malformed."""

    exit_code = 17
    default_hint = "see docs/realjobs.md, 'Project configuration'"


class ProjectEnvironmentError(EnvkitError):
    """``envkit build`` or ``envkit run`` without a lockfile, and the project names none, or more than one."""

    exit_code = 18
    default_hint = "pass a lockfile (envkit build LOCKFILE, envkit run --lock LOCKFILE), or set lock in envkit.toml"


class CpuProfileError(EnvkitError):
    """An unknown CPU profile name (from a record or an image label) or a bad thread count for it."""

    exit_code = 15


class SweepError(EnvkitError):
    """A malformed seed list, sweep id or sweep option, or a sweep report that cannot be made (e.g. no plotting
    library)."""

    exit_code = 16


# --- the engine and images ---------------------------------------------------------------------------------------
class EngineUnavailableError(EnvkitError):
    """The Docker engine cannot be reached."""

    exit_code = 20
    default_hint = (
        "start the Docker engine (e.g. `sudo dockerd &` or `sudo systemctl start docker`), "
        "or point DOCKER_HOST at a running one"
    )


class ImageNotFoundError(EnvkitError):
    """An image (base image, run image or recorded image) is not present and cannot be had."""

    exit_code = 21


class BuildError(EnvkitError):
    """The image build failed; the message carries the failing step and its log."""

    exit_code = 22


class PlatformError(EnvkitError):
    """A lockfile or image targets a platform this host cannot run."""

    exit_code = 23


class RegistryError(EnvkitError):
    """Pushing to or pulling from a registry failed."""

    exit_code = 24


class BaseImageError(EnvkitError):
    """Resolving or making a base image (mmdebstrap from pinned .debs) failed."""

    exit_code = 25


class ImageArchiveError(EnvkitError):
    """A layer source or image archive is malformed or unsafe (absolute names, '..', stray links, device nodes)."""

    exit_code = 27


class ImageMismatchError(EnvkitError):
    """``envkit build --check``: the image rebuilt from nothing is not the one the lock (or the earlier build) says."""

    exit_code = 29
    default_hint = ("see what differs above; if envkit's in-image files or version changed on purpose, refresh the "
                    "lock's IDs with `envkit build LOCK --pin`")


class SlurmError(EnvkitError):
    """Slurm cannot be reached, refuses a job (sbatch's message is shown), or loses track of one."""

    exit_code = 28
    default_hint = "check the cluster with `sinfo` (it should list an idle node) and `squeue`"


# --- runs and the store ------------------------------------------------------------------------------------------
class ScriptNotFoundError(EnvkitError):
    """The script given to `envkit run` does not exist."""

    exit_code = 30


class RunNotFoundError(EnvkitError):
    """No run with that id in the store."""

    exit_code = 31
    default_hint = "list the runs with `envkit runs`"


class InvalidRunIdError(EnvkitError):
    """A run id is malformed (checked before it touches a path)."""

    exit_code = 32
    default_hint = (
        "run ids look like 20261123T191300123Z-3f9a1c2b (UTC time to the millisecond, 8 hex digits); "
        "list them with `envkit runs`"
    )


class AmbiguousRunIdError(EnvkitError):
    """A run id prefix matches more than one run (the message lists them)."""

    exit_code = 36
    default_hint = "give more of the run id (`envkit runs` lists them)"


class StoreError(EnvkitError):
    """The run store cannot be written (disk full, permissions) or a record is corrupt."""

    exit_code = 33


class JobError(EnvkitError):
    """The job could not be started in its container."""

    exit_code = 34


class GpuError(JobError):
    """The job's GPUs cannot be had: fewer GPUs than asked for, no NVIDIA driver or container toolkit, or a driver
    too old for the image's CUDA. Checked before the container is made; a run ends ``failed``, a replay is refused."""

    exit_code = 37


class SweepNotFoundError(EnvkitError):
    """No sweep with that id in the store."""

    exit_code = 38
    default_hint = "list the sweeps with `envkit sweeps`"


class SnapshotError(EnvkitError):
    """A project file cannot be listed, read or copied into the run's snapshot, or an output cannot be hashed."""

    exit_code = 35


# --- replay ------------------------------------------------------------------------------------------------------
class PlatformMismatchError(EnvkitError):
    """The replay host differs from the recorded one in a field that changes numerics.

    ``differences`` holds them (``envkit.fingerprint.FieldDiff``), for the CLI's table or a caller's own use.
    """

    exit_code = 40
    default_hint = "run on a matching host, or pass --force to replay anyway (the replay is marked mismatched)"

    def __init__(self, message: str, hint: str | None = None, differences: list | None = None) -> None:
        super().__init__(message, hint)
        self.differences = list(differences or [])


class InputChangedError(EnvkitError):
    """A recorded input's content changed since the run."""

    exit_code = 41


class MountError(EnvkitError):
    """A mount is unsafe (a socket, a device, a system folder) or, replaying an imported run, not given."""

    exit_code = 43


class UpstreamError(EnvkitError):
    """An ``--input RUN:PATH`` cannot be used: the run did not succeed, PATH is not one of its outputs, or the run
    is not in this store."""

    exit_code = 44


class BundleError(EnvkitError):
    """An exported bundle is malformed or unsafe (path traversal, links, bad hashes)."""

    exit_code = 42


# --- diff --------------------------------------------------------------------------------------------------------
class TraceError(EnvkitError):
    """A step trace file is unreadable, malformed, of an unknown format version, or made with another digest."""

    exit_code = 50


# --- trackers ----------------------------------------------------------------------------------------------------
class TrackerError(EnvkitError):
    """An experiment tracker (MLflow) is unreachable, refused the export, or is not configured or installed.

    Tracker trouble is never the run's trouble: the run and its record stay as they are, and the export can be
    retried.
    """

    exit_code = 60


# Verdict exit codes of `envkit replay` (not errors: the replay itself worked).
EXIT_IDENTICAL = 0
EXIT_DIVERGED = 3
EXIT_FAILED = 4
EXIT_UNVERIFIED = 5  # the run left nothing to compare (no output file, no stdout line): never called IDENTICAL

# `envkit run` exits with the job's own code, so its own failures use the codes `docker run` keeps for itself: 125
# envkit failed (the error's own code above is on the error line and in --json), 126 the command cannot be invoked,
# 127 the command is not in the image. See docs/realjobs.md, "Exit codes".
EXIT_RUN_FAILED = 125
EXIT_CANNOT_INVOKE = 126
EXIT_COMMAND_NOT_FOUND = 127
# `envkit sweep`: every run was made, and at least one of them failed (the others are kept and reported).
EXIT_SWEEP_RUNS_FAILED = 6


def all_error_classes() -> list[type[EnvkitError]]:
    """Every error class, for the exit-code table and its uniqueness test."""
    seen: list[type[EnvkitError]] = []
    stack = [EnvkitError]
    while stack:
        cls = stack.pop()
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


class HealthCheckError(EnvkitError):
    """`envkit doctor` found a problem that stops envkit from working here."""

    exit_code = 26
