"""The Docker implementation of :class:`envkit.engine.base.Engine`.

Images and containers go through :mod:`envkit.engine.dockerapi`, the engine's HTTP API on the standard library: a run
pays no import of the Docker SDK (0.13 s with requests and urllib3). Registry pulls and pushes go through the Docker
SDK, imported only for them: it reads the user's registry credentials (``~/.docker/config.json``, credential
helpers). Every engine error and every ``docker.errors`` conversion of envkit lives in this module.
"""

from __future__ import annotations

import contextlib
import http.client
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from envkit.engine.base import (
    Container,
    ContainerExit,
    ContainerSpec,
    Engine,
    Image,
    Output,
)
from envkit.engine.dockerapi import (
    ApiError,
    AttachStream,
    DockerApi,
    body_of,
    endpoint_from_env,
)
from envkit.errors import (
    EngineUnavailableError,
    EnvkitError,
    ImageNotFoundError,
    JobError,
    RegistryError,
)
from envkit.sizes import parse_size

if TYPE_CHECKING:
    import docker

API_VERSION = "1.41"
OOM_EXIT = 137  # SIGKILL: the only exit code an OOM kill gives, so the only one worth an inspect
_UNREACHABLE = (OSError, http.client.HTTPException)


def connect(timeout: int | None = 600) -> DockerEngine:
    """The engine named by DOCKER_HOST (default: the local socket), checked with a ping.

    Raises:
        EngineUnavailableError: the engine cannot be reached.
    """
    try:
        endpoint = endpoint_from_env()
    except ValueError as exc:
        raise EngineUnavailableError(str(exc), hint="set DOCKER_HOST to unix:///PATH/docker.sock or tcp://HOST:PORT") \
            from None
    # A fixed API version saves the /version round trip of negotiation; 1.41 (Docker 20.10) has everything envkit
    # uses (device requests came in 1.40). An older engine says so, and then its own version is used.
    api = DockerApi(endpoint, os.environ.get("DOCKER_API_VERSION") or API_VERSION, timeout)
    try:
        try:
            api.call("GET", "/_ping")
        except ApiError as exc:
            if "too new" not in exc.message:
                raise
            api.version = str(api.call("GET", "/version", versioned=False)["ApiVersion"])
            api.call("GET", "/_ping")
    except (ApiError, *_UNREACHABLE, ValueError, KeyError, TypeError) as exc:
        raise EngineUnavailableError(f"the Docker engine at {endpoint.url} is not reachable ({short(exc)})") from exc
    return DockerEngine(api)


@contextlib.contextmanager
def translated(action: str, *, image: str | None = None) -> Iterator[None]:
    """Turn the engine's errors and lost connections inside the block into envkit errors."""
    try:
        yield
    except EnvkitError:
        raise
    except ApiError as exc:
        if exc.status == 404 and image is not None:
            raise ImageNotFoundError(
                f"image {image or '?'} not found while {action}",
                hint="build it with `envkit build`, or make a base image with `envkit base`",
            ) from exc
        raise EnvkitError(f"the Docker engine refused {action}: {short(exc)}") from exc
    except _UNREACHABLE as exc:
        raise EngineUnavailableError(f"lost the Docker engine while {action} ({short(exc)})") from exc
    except ValueError as exc:  # a body that is not the JSON the API promises
        raise EnvkitError(f"the Docker engine sent a bad answer while {action} ({short(exc)})") from exc


@contextlib.contextmanager
def sdk_translated(action: str, *, image: str | None = None) -> Iterator[None]:
    """:func:`translated` for the Docker SDK's errors (pulls and pushes)."""
    import docker.errors
    import requests.exceptions

    try:
        yield
    except EnvkitError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFoundError(f"image {image or '?'} not found while {action}") from exc
    except (requests.exceptions.ConnectionError, ConnectionError) as exc:
        raise EngineUnavailableError(f"lost the Docker engine while {action} ({short(exc)})") from exc
    except docker.errors.APIError as exc:
        raise EnvkitError(f"the Docker engine refused {action}: {short(exc)}") from exc
    except docker.errors.DockerException as exc:
        raise EnvkitError(f"docker error while {action}: {short(exc)}") from exc


def short(exc: BaseException) -> str:
    """One line of an exception's text (the engine's errors can span many)."""
    text = getattr(exc, "explanation", None) or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__
    return text[:300]


def _image(attrs: dict[str, Any]) -> Image:
    """An image from ``/images/{name}/json`` (labels under ``Config``) or a ``/images/json`` entry (at the top)."""
    labels = (attrs.get("Config") or {}).get("Labels") if "Config" in attrs else attrs.get("Labels")
    return Image(id=str(attrs["Id"]), repo_digests=tuple(sorted(attrs.get("RepoDigests") or [])),
                 tags=tuple(t for t in attrs.get("RepoTags") or [] if t != "<none>:<none>"),
                 labels=dict(labels or {}))


def create_body(spec: ContainerSpec) -> dict[str, Any]:
    """The ``/containers/create`` body for ``spec``.

    Raises:
        ValueError: ``spec.memory`` or ``spec.shm_size`` is not a size.
    """
    host: dict[str, Any] = {
        "NetworkMode": spec.network,
        "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts],
    }
    if spec.gpus is not None:
        request: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]], "Options": {}}
        if spec.gpus.device_ids:
            request.update(Count=0, DeviceIDs=list(spec.gpus.device_ids))
        else:
            request.update(Count=spec.gpus.count if spec.gpus.count is not None else -1, DeviceIDs=None)
        host["DeviceRequests"] = [request]
    if spec.memory:
        host["Memory"] = host["MemorySwap"] = _bytes(spec.memory, "--memory")
    if spec.shm_size:
        host["ShmSize"] = _bytes(spec.shm_size, "--shm-size")
    if spec.ipc:
        host["IpcMode"] = spec.ipc
    if spec.cap_drop:
        host["CapDrop"] = list(spec.cap_drop)
    if spec.security_opt:
        host["SecurityOpt"] = list(spec.security_opt)
    if spec.pids_limit:
        host["PidsLimit"] = spec.pids_limit
    if spec.ulimits:
        host["Ulimits"] = [{"Name": n, "Soft": s, "Hard": h} for n, (s, h) in spec.ulimits.items()]
    body: dict[str, Any] = {
        "Image": spec.image, "Cmd": list(spec.command), "Env": [f"{k}={v}" for k, v in spec.env.items()],
        "Labels": dict(spec.labels), "Tty": False, "OpenStdin": False, "StdinOnce": False, "AttachStdin": False,
        "AttachStdout": False, "AttachStderr": False, "HostConfig": host,
    }
    if spec.workdir:
        body["WorkingDir"] = spec.workdir
    if spec.user:
        body["User"] = spec.user
    if spec.hostname:
        # With --network none, Docker's /etc/hosts does not name the container: map it to the loopback.
        body["Hostname"] = spec.hostname
        host["ExtraHosts"] = [f"{spec.hostname}:127.0.0.1"]
    return body


def _bytes(size: str, option: str) -> int:
    try:
        return parse_size(size)
    except ValueError as exc:
        raise ValueError(f"{option} {exc}") from None


class DockerEngine(Engine):
    """A Docker engine reached through its HTTP API (and, for registries, the Docker SDK)."""

    name = "docker"

    def __init__(self, api: DockerApi, client: docker.DockerClient | None = None) -> None:
        self.api = api
        self._client = client
        self._facts: dict[str, Any] | None = None
        self._images: dict[str, Image] = {}  # by ID: one process asks for the same image several times

    @property
    def client(self) -> docker.DockerClient:
        """The Docker SDK's client of the same engine, made on first use (pulls and pushes only)."""
        if self._client is None:
            import docker

            with sdk_translated("connecting for a registry operation"):
                self._client = docker.from_env(timeout=self.api.timeout, version=self.api.version)
        return self._client

    # --- facts -----------------------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        if self._facts is None:
            with translated("reading the engine's version"):
                info = self.api.call("GET", "/info") or {}
            # /info carries the server version too: one round trip instead of two.
            self._facts = {
                "version": info.get("ServerVersion"),
                "api_version": self.api.version,
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
        if ref in self._images:
            return self._images[ref]
        if not ref or not ref.strip():
            raise ImageNotFoundError(f"no image named {ref!r}")
        with translated("inspecting the image", image=ref):
            found = _image(self.api.call("GET", "/images/{}/json", ref))
        self._images[found.id] = found
        return found

    def images_labelled(self, label: str, value: str) -> list[Image]:
        with translated("looking up images"):
            found = self.api.call("GET", "/images/json", params={"filters": {"label": f"{label}={value}"}})
        return [_image(i) for i in found or []]

    def load(self, tar: Path | Iterable[bytes]) -> list[str]:
        body, headers, chunked = body_of(tar)
        names = []
        try:
            with translated("loading an image archive"):
                # No read timeout: a CUDA image is several GB, and loading it may take longer than any.
                response = self.api.open("POST", self.api.url("/images/load", params={"quiet": 1}), body=body,
                                         headers={"Content-Type": "application/x-tar", **headers}, timeout=None,
                                         chunked=chunked)
                for item in self.api.stream_json(response):
                    if item.get("error"):
                        reason = short(Exception(str(item["error"])))
                        raise EnvkitError(f"the Docker engine refused the image archive: {reason}")
                    text = str(item.get("stream") or "").strip()
                    for prefix in ("Loaded image ID: ", "Loaded image: "):
                        if text.startswith(prefix):
                            names.append(text[len(prefix):])
        finally:
            if hasattr(body, "close"):
                body.close()
        return list(dict.fromkeys(self.image(name).id for name in names))

    def save(self, image_id: str) -> Iterator[bytes]:
        with translated("saving the image", image=image_id):
            response = self.api.open("GET", self.api.url("/images/{}/get", image_id), timeout=None)
            yield from self.api.stream_bytes(response)

    def pull(self, ref: str) -> str:
        repo, sep, digest = ref.partition("@")
        if not sep:
            repo, _, digest = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
        try:
            with sdk_translated(f"pulling {ref}", image=ref):
                self.client.api.pull(repo, tag=digest)
            return self.image(ref).id
        except EngineUnavailableError:
            raise
        except EnvkitError as exc:
            raise RegistryError(f"cannot pull {ref}: {exc.message}",
                                hint="check that the registry is reachable from the Docker engine") from exc

    def push(self, image_id: str, repository: str, tag: str) -> str:
        self.tag(image_id, f"{repository}:{tag}")
        digest = None
        with sdk_translated(f"pushing to {repository}"):
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
            self.api.call("POST", "/images/{}/tag", image_id, params={"repo": repo, "tag": version})

    def remove_image(self, ref: str, force: bool = False) -> bool:
        try:
            self.api.call("DELETE", "/images/{}", ref, params={"force": force})
            return True
        except (ApiError, *_UNREACHABLE):  # in use or gone: the caller only wants to know
            return False

    # --- containers ------------------------------------------------------------------------------------------------
    def create(self, spec: ContainerSpec) -> DockerContainer:
        try:
            body = create_body(spec)
        except ValueError as exc:
            raise JobError(f"the job's container cannot be created: {exc}", hint=_create_hint(spec, str(exc))) from None
        try:
            with translated("creating the job's container", image=spec.image):
                container = str(self.api.call("POST", "/containers/create", body=body)["Id"])
        except (ImageNotFoundError, EngineUnavailableError):
            raise
        except EnvkitError as exc:
            reason = short(exc.__cause__) if isinstance(exc.__cause__, ApiError) else exc.message
            raise JobError(f"the Docker engine refused the job's container: {reason}",
                           hint=_create_hint(spec, reason)) from exc
        except (KeyError, TypeError) as exc:
            raise JobError(f"the Docker engine gave no container ID ({short(exc)})") from exc
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
            found = self.api.call("GET", "/containers/json", params={"all": True, "filters": {"label": label}})
        return [(c["Id"], dict(c.get("Labels") or {}), str(c.get("State"))) for c in found or []]

    def remove_container(self, container_id: str) -> None:
        with contextlib.suppress(ApiError, *_UNREACHABLE):
            self.api.call("DELETE", "/containers/{}", container_id, params={"force": True})


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
    if "memory" in low or "invalid size" in low or "not a size" in low:
        return "give a size such as 512m or 4g"
    return None


class DockerContainer(Container):
    def __init__(self, engine: DockerEngine, container_id: str, spec: ContainerSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.id = container_id

    def start(self) -> Output:
        api = self.engine.api
        with translated("starting the job's container"):
            # Attach before start, with logs: nothing the job prints early is lost.
            stream = api.attach(self.id)
            try:
                api.call("POST", "/containers/{}/start", self.id)
            except ApiError as exc:  # GPU hook, missing binary, bad limits: reported at start
                stream.close()
                raise JobError(f"the job's container did not start: {short(exc)}",
                               hint=_start_hint(self.spec, short(exc))) from exc
            except BaseException:
                stream.close()
                raise
        return self._drain(stream)

    @staticmethod
    def _drain(stream: AttachStream) -> Output:
        try:
            yield from stream
        except Exception:  # noqa: BLE001 - a broken attach stream (stop, engine hiccup) ends the streaming only
            return
        finally:
            stream.close()

    def wait(self) -> ContainerExit:
        api = self.engine.api
        with translated("waiting for the job"):
            code = int((api.call("POST", "/containers/{}/wait", self.id, timeout=None) or {}).get("StatusCode", -1))
            oom = False
            if code == OOM_EXIT:  # killed: by the OOM killer, or by a signal? Only the state says.
                state = (api.call("GET", "/containers/{}/json", self.id) or {}).get("State") or {}
                oom = bool(state.get("OOMKilled"))
        return ContainerExit(code, oom)

    def stop(self, timeout: int = 5) -> None:
        api = self.engine.api
        with contextlib.suppress(ApiError, *_UNREACHABLE):
            wait = None if api.timeout is None else api.timeout + timeout
            api.call("POST", "/containers/{}/stop", self.id, params={"t": timeout}, timeout=wait)

    def remove(self) -> None:
        self.engine.remove_container(self.id)


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
