"""Pinning a base image for a lock: its image ID, the Python inside it, and how it was made."""

from __future__ import annotations

from envkit.engine import ContainerSpec, Engine
from envkit.errors import EngineUnavailableError, EnvkitError, ImageNotFoundError, SpecError
from envkit.lock.model import BaseImage
from envkit.settings import LABEL_BASE_PYTHON, LABEL_BASE_SOURCE


def inspect_base(engine: Engine, ref: str) -> BaseImage:
    """Pin a local base image: its image ID, Python version and provenance.

    Raises:
        ImageNotFoundError: the image is not on this engine (nothing is pulled implicitly).
    """
    image = engine.find_image(ref)
    if image is None:
        raise ImageNotFoundError(
            f"base image {ref} does not exist on this Docker engine",
            hint="make one with `envkit base debian bookworm --python 3.11` or `docker pull` it first",
        )
    labels = image.labels or {}
    python = labels.get(LABEL_BASE_PYTHON) or _probe_python(engine, image.id, ref)
    repo_digests = list(image.repo_digests)
    return BaseImage(
        ref=ref,
        digest=image.id,
        python=python,
        repo_digest=repo_digests[0] if repo_digests else None,
        source=labels.get(LABEL_BASE_SOURCE),
    )


def _probe_python(engine: Engine, image_id: str, ref: str) -> str:
    """A base not made by envkit: ask its python3 for its version (a throwaway container)."""
    spec = ContainerSpec(image=image_id, command=["python3", "-c", "import platform;print(platform.python_version())"])
    try:
        out = engine.run_output(spec)
    except EngineUnavailableError:
        raise
    except EnvkitError as exc:
        raise SpecError(f"base image {ref} has no working python3 ({exc.message})",
                        hint="use a base with python3 (e.g. `envkit base debian bookworm --python 3.11`)") from exc
    return out.decode().strip()
