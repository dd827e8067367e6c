"""The Docker implementation of :class:`envkit.engine.base.Engine`: every Docker SDK call and every ``docker.errors``
conversion of envkit lives here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.engine.base import Container, ContainerExit, ContainerSpec, Engine, Image, Output
from envkit.errors import (
    EngineUnavailableError,
    EnvkitError,
    ImageNotFoundError,
    JobError,
    RegistryError,
)

if TYPE_CHECKING:
    import docker

API_VERSION = "1.41"
OOM_EXIT = 137  # SIGKILL: the only exit code an OOM kill gives, so the only one worth an inspect


def connect(timeout: int | None = 600) -> DockerEngine:
    """The engine named by DOCKER_HOST (default: the local socket), checked with a ping.

    Raises:
        EngineUnavailableError: the engine cannot be reached.
    """
    import docker.errors

    import docker

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    # A fixed API version saves the /version round trip of negotiation; 1.41 (Docker 20.10) has everything envkit
    # uses (device requests came in 1.40). An older engine says so, and then the client negotiates.
    version = os.environ.get("DOCKER_API_VERSION") or API_VERSION
    try:
        client = docker.from_env(timeout=timeout, version=version)
        try:
            client.ping()
        except docker.errors.APIError as exc:
            if "too new" not in str(exc):
                raise
            client = docker.from_env(timeout=timeout, version="auto")
            client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        raise EngineUnavailableError(f"the Docker engine at {where} is not reachable ({short(exc)})") from exc
    return DockerEngine(client)


@contextlib.contextmanager
def translated(action: str, *, image: str | None = None) -> Iterator[None]:
    """Turn docker SDK and connection errors raised inside the block into envkit errors."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except EnvkitError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFoundError(
            f"image {image or '?'} not found while {action}",
            hint="build it with `envkit build`, or make a base image with `envkit base`",
        ) from exc
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise EngineUnavailableError(f"lost the Docker engine while {action} ({short(exc)})") from exc
    except docker.errors.APIError as exc:
        raise EnvkitError(f"the Docker engine refused {action}: {short(exc)}") from exc
    except docker.errors.DockerException as exc:
        raise EnvkitError(f"docker error while {action}: {short(exc)}") from exc


def short(exc: BaseException) -> str:
    """One line of an exception's text (docker errors can span many)."""
    text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
    text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return text[:300]


def _image(img: Any) -> Image:
    attrs = img.attrs or {}
    return Image(id=img.id, repo_digests=tuple(sorted(attrs.get("RepoDigests") or [])),
                 tags=tuple(attrs.get("RepoTags") or []), labels=dict(img.labels or {}))


class DockerEngine(Engine):
    """A Docker engine reached through the Docker SDK."""

    name = "docker"

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self._facts: dict[str, Any] | None = None
        self._images: dict[str, Image] = {}  # by ID: one process asks for the same image several times

    # --- facts -----------------------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            with translated("reading the engine's version"):
                info = self.client.info()
            # /info carries the server version too: one round trip instead of two.
            self._facts = {
                "version": info.get("ServerVersion"),
                "api_version": self.client.api.api_version,
                "storage_driver": info.get("Driver"),
                "os": info.get("OperatingSystem"),
                "arch": info.get("Architecture"),
                "kernel": info.get("KernelVersion"),
                "runtimes": sorted((info.get("Runtimes") or {}).keys()),
                "default_runtime": info.get("DefaultRuntime"),
                "root_dir": info.get("DockerRootDir"),  # where images live: a build checks its free space there
            }
        return dict(self._facts)

    # --- images ----------------------------------------------------------------------------------------------------
    def image(self, ref: str) -> Image:
        import docker.errors

        if ref in self._images:
            return self._images[ref]
        try:
            with translated("inspecting the image", image=ref):
                found = _image(self.client.images.get(ref))
        except docker.errors.NullResource as exc:
            raise ImageNotFoundError(f"no image named {ref!r}") from exc
        self._images[found.id] = found
        return found

    def images_labelled(self, label: str, value: str) -> list[Image]:
        with translated("looking up images"):
            return [_image(i) for i in self.client.images.list(filters={"label": f"{label}={value}"})]

    def load(self, tar: Path | Iterable[bytes]) -> list[str]:
        # A CUDA image is several GB: loading it may take longer than any read timeout, as a build would.
        api, timeout = self.client.api, self.client.api.timeout
        api.timeout = None
        try:
            if not isinstance(tar, (str, Path)):  # chunks: sent as a chunked upload, never written to disk here
                with translated("loading an image archive"):
                    return [img.id for img in self.client.images.load(tar)]
            with translated("loading an image archive"), open(tar, "rb") as fh:
                return [img.id for img in self.client.images.load(fh)]
        finally:
            api.timeout = timeout

    def save(self, image_id: str) -> Iterator[bytes]:
        with translated("saving the image", image=image_id):
            image = self.client.images.get(image_id)
            yield from image.save(named=False)

    def pull(self, ref: str) -> str:
        repo, sep, digest = ref.partition("@")
        if not sep:
            repo, _, digest = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        try:
            with translated(f"pulling {ref}", image=ref):
                self.client.api.pull(repo, tag=digest)
                return self.client.images.get(ref).id
        except EngineUnavailableError:
            raise
        except EnvkitError as exc:
            raise RegistryError(f"cannot pull {ref}: {exc.message}",
                                hint="check that the registry is reachable from the Docker engine") from exc

    def push(self, image_id: str, repository: str, tag: str) -> str:
        self.tag(image_id, f"{repository}:{tag}")
        digest = None
        with translated(f"pushing to {repository}"):
            for item in self.client.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in item:
                    raise RegistryError(f"push to {repository} failed: {str(item['error']).strip()}",
                                        hint="check that the registry is running and reachable from the engine")
                aux = item.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = aux["Digest"]
        if not digest:
            raise RegistryError(f"push to {repository} reported no digest")
        return f"{repository}@{digest}"

    def tag(self, image_id: str, ref: str) -> None:
        repo, _, version = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        with translated("tagging the image", image=image_id):
            self.client.api.tag(image_id, repo, version)

    def remove_image(self, ref: str, force: bool = False) -> bool:
        try:
            self.client.images.remove(ref, force=force)
            return True
        except Exception:  # noqa: BLE001 - in use or gone: the caller only wants to know
            return False

    # --- containers ------------------------------------------------------------------------------------------------
    def _create_kwargs(self, spec: ContainerSpec) -> dict[str, Any]:
        import docker.types

        requests = []
        if spec.gpus is not None:
            if spec.gpus.device_ids:
                requests.append(docker.types.DeviceRequest(device_ids=list(spec.gpus.device_ids),
                                                           capabilities=[["gpu"]]))
            else:
                requests.append(docker.types.DeviceRequest(count=spec.gpus.count if spec.gpus.count is not None
                                                           else -1, capabilities=[["gpu"]]))
        kwargs: dict[str, Any] = {
            "command": spec.command, "environment": spec.env, "network_mode": spec.network,
            "volumes": {str(m.source): {"bind": m.target, "mode": "ro" if m.read_only else "rw"}
                        for m in spec.mounts},
            "labels": spec.labels, "device_requests": requests, "stdin_open": False, "tty": False, "detach": True,
        }
        if spec.workdir:
            kwargs["working_dir"] = spec.workdir
        if spec.user:
            kwargs["user"] = spec.user
        if spec.memory:
            kwargs["mem_limit"] = spec.memory
            kwargs["memswap_limit"] = spec.memory
        if spec.shm_size:
            kwargs["shm_size"] = spec.shm_size
        if spec.ipc:
            kwargs["ipc_mode"] = spec.ipc
        if spec.cap_drop:
            kwargs["cap_drop"] = list(spec.cap_drop)
        if spec.security_opt:
            kwargs["security_opt"] = list(spec.security_opt)
        if spec.pids_limit:
            kwargs["pids_limit"] = spec.pids_limit
        if spec.hostname:
            # With --network none, Docker's /etc/hosts does not name the container: map it to the loopback.
            kwargs["hostname"] = spec.hostname
            kwargs["extra_hosts"] = {spec.hostname: "127.0.0.1"}
        if spec.ulimits:
            kwargs["ulimits"] = [docker.types.Ulimit(name=n, soft=s, hard=h) for n, (s, h) in spec.ulimits.items()]
        return kwargs

    def create(self, spec: ContainerSpec) -> DockerContainer:
        import docker.errors
        from docker.models.containers import _create_container_args

        try:
            with translated("creating the job's container", image=spec.image):
                # The low-level call: the SDK's containers.create() inspects the new container once more.
                kwargs = self._create_kwargs(spec)
                kwargs.pop("detach", None)
                args = _create_container_args({**kwargs, "image": spec.image, "version": self.client.api._version})
                container = self.client.api.create_container(**args)["Id"]
        except (docker.errors.APIError, ValueError, TypeError) as exc:
            raise JobError(f"the Docker engine refused the job's container: {short(exc)}",
                           hint=_create_hint(spec, short(exc))) from exc
        except EnvkitError as exc:
            if isinstance(exc, (ImageNotFoundError, EngineUnavailableError)):
                raise
            raise JobError(f"cannot create the job's container: {exc.message}",
                           hint=_create_hint(spec, exc.message)) from exc
        return DockerContainer(self, container, spec)

    def run_output(self, spec: ContainerSpec) -> bytes:
        container = self.create(spec)
        try:
            out, err = [], []
            for o, e in container.start():
                if o:
                    out.append(o)
                if e:
                    err.append(e)
            status = container.wait()
        finally:
            container.remove()
        if status.exit_code != 0:
            last = b"".join(err).decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise JobError(f"{spec.command[0]} in image {spec.image[:19]} exited {status.exit_code}: {last[0][:200]}")
        return b"".join(out)

    def containers_labelled(self, label: str) -> list[tuple[str, dict[str, str], str]]:
        with translated("listing containers"):
            found = self.client.api.containers(all=True, filters={"label": label})
        return [(c["Id"], dict(c.get("Labels") or {}), str(c.get("State"))) for c in found]

    def remove_container(self, container_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client.api.remove_container(container_id, force=True)


# What the NVIDIA container toolkit says when a GPU container cannot start (at start, not at create), and what to do.
_GPU_HINTS = (
    ("could not select device driver", "the Docker engine has no NVIDIA hook: install the NVIDIA container toolkit "
                                       "(nvidia-ctk runtime configure --runtime=docker) and restart dockerd, or run "
                                       "with --gpus none"),
    ("unknown device", "this host has fewer GPUs than requested, or not that id: `envkit fingerprint` lists them"),
    ("unsatisfied condition: cuda", "the NVIDIA driver is older than the image's CUDA (NVIDIA_REQUIRE_CUDA): update "
                                    "the driver, or use a lock with an older CUDA's wheels"),
    ("driver not loaded", "the NVIDIA kernel module is not loaded on this host (nvidia-smi fails too): load it"),
    ("driver/library version mismatch", "the NVIDIA driver was updated without a reboot: reboot the host"),
    ("libnvidia-ml.so", "the NVIDIA driver's libraries are missing on this host: install the driver"),
    ("nvidia-container-cli", "the NVIDIA container toolkit could not give the container its GPUs: `envkit doctor` "
                             "checks a GPU container"),
)


def gpu_hint(reason: str) -> str | None:
    """The hint for a GPU container that cannot start, from the toolkit's message (None: not a GPU problem)."""
    low = reason.lower()
    return next((hint for key, hint in _GPU_HINTS if key in low), None)


def _create_hint(spec: ContainerSpec, reason: str) -> str | None:
    low = reason.lower()
    if spec.gpus is not None and ("gpu" in low or "device driver" in low or "nvidia" in low):
        return gpu_hint(reason) or "install the NVIDIA container toolkit, or run with --gpus none"
    if "memory" in low or "invalid size" in low:
        return "give a memory size such as 512m or 4g"
    return None


class DockerContainer(Container):
    def __init__(self, engine: DockerEngine, container_id: str, spec: ContainerSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.id = container_id

    def start(self) -> Output:
        import docker.errors
        from docker.types.daemon import CancellableStream

        api = self.engine.client.api
        with translated("starting the job's container"):
            # Attach before start, with logs=True: nothing the job prints early is lost. Attached by hand: the SDK's
            # attach() inspects the container to learn whether it has a TTY, and envkit's never has one.
            response = api._post(api._url("/containers/{0}/attach", self.id),
                                 headers={"Connection": "Upgrade", "Upgrade": "tcp"},
                                 params={"logs": 1, "stdout": 1, "stderr": 1, "stream": 1}, stream=True)
            stream = CancellableStream(api._read_from_socket(response, True, tty=False, demux=True), response)
            try:
                api.start(self.id)
            except docker.errors.APIError as exc:  # GPU hook, missing binary, bad limits: reported at start
                raise JobError(f"the job's container did not start: {short(exc)}",
                               hint=_start_hint(self.spec, short(exc))) from exc
        return self._drain(stream)

    @staticmethod
    def _drain(stream: Any) -> Output:
        try:
            yield from stream
        except Exception:  # noqa: BLE001 - a broken attach stream (stop, engine hiccup) ends the streaming only
            return

    def wait(self) -> ContainerExit:
        api = self.engine.client.api
        with translated("waiting for the job"):
            code = int(api.wait(self.id, timeout=None).get("StatusCode", -1))
            oom = False
            if code == OOM_EXIT:  # killed: by the OOM killer, or by a signal? Only the state says.
                oom = bool((api.inspect_container(self.id).get("State") or {}).get("OOMKilled"))
        return ContainerExit(code, oom)

    def stop(self, timeout: int = 5) -> None:
        with contextlib.suppress(Exception):
            self.engine.client.api.stop(self.id, timeout=timeout)

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.engine.client.api.remove_container(self.id, force=True)


def _start_hint(spec: ContainerSpec, reason: str) -> str | None:
    low = reason.lower()
    hint = gpu_hint(reason) if spec.gpus is not None or "device driver" in low else None
    if hint:
        return hint
    if "rlimit" in low and spec.ulimits:
        return "the engine cannot raise the job's ulimits (memlock, stack; a rootless engine?)"
    if "executable file not found" in low or "no such file or directory" in low:
        return "the command is not in the image; check the image or the command"
    return _create_hint(spec, reason)
