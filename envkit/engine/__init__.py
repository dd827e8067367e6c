"""The one boundary to where jobs run: :class:`Engine` (images and containers) and its implementations.

``connect()`` gives the Docker engine named by ``DOCKER_HOST``; workflows take an :class:`Engine` and never see an
SDK. See :mod:`envkit.engine.base` for the interface.
"""

from __future__ import annotations

from envkit.engine.base import (
    Container,
    ContainerExit,
    ContainerSpec,
    Engine,
    GpuRequest,
    Image,
    Mount,
)

__all__ = ["Container", "ContainerExit", "ContainerSpec", "Engine", "GpuRequest", "Image", "Mount", "connect"]


def connect(timeout: int | None = 600) -> Engine:
    """The Docker engine named by DOCKER_HOST (default: the local socket).

    Raises:
        EngineUnavailableError: it does not answer.
    """
    from envkit.engine.docker import connect as docker_connect

    return docker_connect(timeout=timeout)
