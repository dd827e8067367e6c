"""The engine boundary: where and how a job's container runs, and the images it runs from.

Workflows (build, run, replay, bundles) see only :class:`Engine` and :class:`Container`: small, typed, and free of any
SDK's objects or exceptions. :class:`envkit.engine.docker.DockerEngine` implements them on a Docker engine, through its
HTTP API (:mod:`envkit.engine.dockerapi`; the Docker SDK only for registry pulls and pushes); ``tests/unit/fakes.py`` implements them in memory, so the executor, replay and
the build cache are unit-tested without a daemon. A batch scheduler (Slurm) sits one level up, as a sweep backend
(:class:`envkit.sweep.backend.Backend`): each of its tasks runs the executor against its node's engine.

Every method raises :mod:`envkit.errors` classes: :class:`~envkit.errors.ImageNotFoundError` for a missing image,
:class:`~envkit.errors.EngineUnavailableError` when the engine goes away, :class:`~envkit.errors.RegistryError` for
pulls and pushes, :class:`~envkit.errors.JobError` when a container cannot be created or started (with the engine's
reason and a hint). Images are made by envkit itself and loaded (:mod:`envkit.image.builder`), never built here.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Image:
    """An image as the engine knows it."""

    id: str  # sha256:<64 hex>, the config's digest
    repo_digests: tuple[str, ...] = ()  # repo@sha256:... for every registry it was pushed to or pulled from
    tags: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Mount:
    """A bind mount: a host path at a container path."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class GpuRequest:
    """Which GPUs a container gets: ``count`` (-1 = all) or explicit ``device_ids``; Docker maps a count N to
    devices 0..N-1."""

    count: int | None = None
    device_ids: tuple[str, ...] = ()


@dataclass
class ContainerSpec:
    """Everything that decides how a container runs."""

    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    network: str = "none"
    labels: dict[str, str] = field(default_factory=dict)
    gpus: GpuRequest | None = None
    memory: str | None = None  # docker syntax: 512m, 4g
    shm_size: str | None = None
    ipc: str | None = None  # private | shareable | host
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    pids_limit: int | None = None
    ulimits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (soft, hard)
    hostname: str | None = None  # set and resolvable to 127.0.0.1 inside (torchrun's rendezvous looks it up)


@dataclass(frozen=True)
class ContainerExit:
    exit_code: int
    oom_killed: bool = False


Output = Iterator[tuple[bytes | None, bytes | None]]  # (stdout chunk, stderr chunk) as the job writes them


class Container(abc.ABC):
    """A created container (not started yet)."""

    id: str

    @abc.abstractmethod
    def start(self) -> Output:
        """Start it; the returned iterator yields its output as it comes and ends when its streams close.

        Raises:
            JobError: the engine refused to start it (with the reason and a hint).
        """

    @abc.abstractmethod
    def wait(self) -> ContainerExit:
        """Block until it exits."""

    @abc.abstractmethod
    def stop(self, timeout: int = 5) -> None:
        """Ask it to stop (SIGTERM, then SIGKILL after ``timeout``); harmless when it has exited."""

    @abc.abstractmethod
    def remove(self) -> None:
        """Remove it whatever its state; harmless when it is gone."""


class Engine(abc.ABC):
    """A container engine with its image store."""

    name = "engine"

    @abc.abstractmethod
    def facts(self) -> dict[str, Any]:
        """Version, storage driver, OS, architecture, kernel, runtimes (the fingerprint's ``engine`` section)."""

    # --- images ----------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def image(self, ref: str) -> Image:
        """The image called ``ref`` (ID, tag or repo@digest). Raises ImageNotFoundError."""

    def find_image(self, ref: str) -> Image | None:
        """The image called ``ref``, or None."""
        from envkit.errors import ImageNotFoundError

        try:
            return self.image(ref)
        except ImageNotFoundError:
            return None

    @abc.abstractmethod
    def images_labelled(self, label: str, value: str) -> list[Image]:
        """Images whose label ``label`` equals ``value``."""

    @abc.abstractmethod
    def load(self, tar: Path | Iterable[bytes]) -> list[str]:
        """Load a ``docker save`` archive, from a file or streamed as chunks; the IDs of the images it held."""

    @abc.abstractmethod
    def save(self, image_id: str) -> Iterator[bytes]:
        """The ``docker save`` archive of one image, untagged, in chunks."""

    @abc.abstractmethod
    def pull(self, ref: str) -> str:
        """Pull ``repo@sha256:...`` (or ``repo:tag``); its image ID. Raises RegistryError."""

    @abc.abstractmethod
    def push(self, image_id: str, repository: str, tag: str) -> str:
        """Tag and push; the pushed manifest's ``repository@sha256:...``. Raises RegistryError."""

    @abc.abstractmethod
    def tag(self, image_id: str, ref: str) -> None:
        """Name an image ``ref`` (``repo:tag``)."""

    @abc.abstractmethod
    def remove_image(self, ref: str, force: bool = False) -> bool:
        """Remove an image or a name of it; False when it could not be (in use, gone)."""

    # --- containers ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create(self, spec: ContainerSpec) -> Container:
        """Create (not start) a container. Raises JobError with the engine's reason."""

    @abc.abstractmethod
    def run_output(self, spec: ContainerSpec) -> bytes:
        """Run a short helper container to its end and return its stdout (the container is removed).

        Raises:
            JobError: it could not start, or exited non-zero (its stderr's last line in the message).
        """

    @abc.abstractmethod
    def containers_labelled(self, label: str) -> list[tuple[str, dict[str, str], str]]:
        """``(id, labels, state)`` of every container carrying ``label``, running or not."""

    @abc.abstractmethod
    def remove_container(self, container_id: str) -> None:
        """Remove a container by ID whatever its state."""
