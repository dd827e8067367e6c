"""The Docker engine boundary: connecting, engine facts, and every ``docker.errors`` conversion in one place.

Core modules take a ``docker.DockerClient`` from :func:`connect` and wrap engine calls in :func:`translated` so that
the docker SDK's exceptions never reach the CLI; they become :mod:`envkit.errors` classes with a hint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from envkit.errors import EngineUnavailableError, EnvkitError, ImageNotFoundError

if TYPE_CHECKING:
    import docker


def connect(timeout: int = 600) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked with a ping.

    Raises:
        EngineUnavailableError: the engine cannot be reached.
    """
    import docker
    import docker.errors

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise EngineUnavailableError(f"the Docker engine at {where} is not reachable ({_short(exc)})") from exc
    return client


def engine_info(client: docker.DockerClient) -> dict[str, Any]:
    """Engine facts that go into a fingerprint: version, storage driver, OS and architecture."""
    with translated("reading the engine's version"):
        version = client.version()
        info = client.info()
    return {
        "version": version.get("Version"),
        "api_version": version.get("ApiVersion"),
        "storage_driver": info.get("Driver"),
        "os": info.get("OperatingSystem"),
        "arch": info.get("Architecture"),
        "kernel": info.get("KernelVersion"),
        "runtimes": sorted((info.get("Runtimes") or {}).keys()),
        "default_runtime": info.get("DefaultRuntime"),
    }


@contextlib.contextmanager
def translated(action: str, *, image: str | None = None) -> Iterator[None]:
    """Turn docker SDK and connection errors raised inside the block into envkit errors.

    Args:
        action: what was being done, for the message ("pushing the image").
        image: the image concerned, so that a missing image is named.
    """
    import docker.errors
    import requests.exceptions

    try:
        yield
    except EnvkitError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFoundError(
            f"image {image or '?'} not found while {action}",
            hint="build it with `envkit build LOCKFILE`, or make a base image with `envkit base`",
        ) from exc
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise EngineUnavailableError(f"lost the Docker engine while {action} ({_short(exc)})") from exc
    except docker.errors.APIError as exc:
        raise EnvkitError(f"the Docker engine refused {action}: {_short(exc)}") from exc
    except docker.errors.DockerException as exc:
        raise EnvkitError(f"docker error while {action}: {_short(exc)}") from exc


def _short(exc: BaseException) -> str:
    """One line of an exception's text (docker errors can span many)."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return text[:300]
