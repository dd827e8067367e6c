"""An in-memory :class:`envkit.engine.Engine` for unit tests: images, registries and containers without a daemon.

A container's job is a Python function ``job(ctx) -> Outcome`` registered per image: ``ctx`` gives the container's
spec, its environment and the host folder behind each mount target, so a job reads its inputs and writes its outputs
on the host exactly where the real container would. ``stop()`` (what Ctrl-C does) marks the container stopped; a
job can look at ``ctx.stopped``. Helper scripts (``probe.py``, ``tensordiff.py``) get canned answers.

GPUs: ``gpus=N`` plays a host whose NVIDIA container toolkit gives N devices; a container with a device request
then starts when the request fits and fails at start (as the toolkit's hook does) when it does not; with
``gpus=None`` (no toolkit) any device request fails at start with Docker's "could not select device driver".
``nvidia-smi -L`` in a helper container lists the devices it was given.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envkit.engine.base import Container, ContainerExit, ContainerSpec, Engine, Image, Output
from envkit.errors import EnvkitError, ImageNotFoundError, JobError, RegistryError

PROBE = {"schema_version": 1, "python": {"version": "3.11.2", "implementation": "CPython"},
         "torch": {"available": False, "reason": "not installed"}, "threads": {"torch": None}, "env": {},
         "errors": {}}


@dataclass
class Outcome:
    exit_code: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    oom: bool = False


@dataclass
class JobContext:
    spec: ContainerSpec
    stopped: threading.Event

    @property
    def env(self) -> dict[str, str]:
        return self.spec.env

    def path(self, target: str) -> Path:
        """The host path mounted at ``target`` (or below it)."""
        for m in sorted(self.spec.mounts, key=lambda m: -len(m.target)):
            if target == m.target or target.startswith(m.target + "/"):
                return Path(m.source) / target[len(m.target):].lstrip("/")
        raise KeyError(target)


Job = Callable[[JobContext], Outcome]


def image_id(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


@dataclass
class FakeEngine(Engine):
    """Images by ID, registries by name (``up`` or not), jobs by image ID; every call is logged in ``calls``."""

    arch: str = "x86_64"
    images: dict[str, Image] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    registries: dict[str, dict[str, str]] = field(default_factory=dict)  # registry host -> {digest ref: image id}
    down: set[str] = field(default_factory=set)  # registry hosts that do not answer
    calls: list[tuple[str, Any]] = field(default_factory=list)
    create_error: str | None = None
    start_error: str | None = None
    probe: dict[str, Any] = field(default_factory=lambda: dict(PROBE))
    gpus: int | None = None  # devices the NVIDIA hook gives; None: no NVIDIA container toolkit
    ulimits_refused: bool = False  # an engine that may not raise ulimits (rootless, sandboxed): refused at start
    gpu_name: str = "NVIDIA H100 80GB HBM3"
    helpers: list[ContainerSpec] = field(default_factory=list)  # every helper container's spec (probe, nvidia-smi)

    name = "fake"

    configs: dict[str, bytes] = field(default_factory=dict)  # image ID -> its config (sha256 of it is the ID)
    chains: set[tuple[str, ...]] = field(default_factory=set)  # layer stacks the engine has (what load may omit)

    def add_image(self, name: str, job: Job | None = None, labels: dict[str, str] | None = None,
                  repo_digests: tuple[str, ...] = ()) -> str:
        """An image of one made-up layer, with a real config (its ID is the config's sha256, as Docker's)."""
        layer = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
        config = json.dumps({"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
                             "config": {"Env": ["PATH=/usr/bin:/bin"], "Labels": dict(labels or {})},
                             "history": [{"created": "1970-01-01T00:00:00Z", "created_by": name}],
                             "rootfs": {"type": "layers", "diff_ids": [layer]}}, sort_keys=True).encode()
        iid = "sha256:" + hashlib.sha256(config).hexdigest()
        self.images[iid] = Image(id=iid, repo_digests=repo_digests, tags=(name,), labels=dict(labels or {}))
        self.configs[iid] = config
        self.chains.add((layer,))
        if job is not None:
            self.jobs[iid] = job
        return iid

    # --- Engine ------------------------------------------------------------------------------------------------------
    def facts(self) -> dict[str, Any]:
        self.calls.append(("facts", None))
        return {"version": "fake-1.0", "api_version": "1.41", "storage_driver": "memory", "os": "fake",
                "arch": self.arch, "kernel": "0", "runtimes": ["runc"], "default_runtime": "runc"}

    def image(self, ref: str) -> Image:
        self.calls.append(("image", ref))
        for img in self.images.values():
            if ref == img.id or ref in img.tags or ref in img.repo_digests:
                return img
        raise ImageNotFoundError(f"image {ref} not found")

    def images_labelled(self, label: str, value: str) -> list[Image]:
        self.calls.append(("images_labelled", (label, value)))
        return [img for img in self.images.values() if img.labels.get(label) == value]

    def load(self, tar: Path | Iterable[bytes]) -> list[str]:
        """Read the archive as ``docker load`` does: a layer file may be missing only when the engine has that stack
        of layers already."""
        data = Path(tar).read_bytes() if isinstance(tar, (str, Path)) else b"".join(tar)
        self.calls.append(("load", len(data)))
        ids = []
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            names = set(archive.getnames())
            for entry in json.loads(archive.extractfile("manifest.json").read()):
                config = archive.extractfile(entry["Config"]).read()
                parsed = json.loads(config)
                diff_ids = parsed["rootfs"]["diff_ids"]
                for i, layer in enumerate(entry["Layers"]):
                    if layer not in names and tuple(diff_ids[:i + 1]) not in self.chains:
                        raise EnvkitError(f"docker error while loading an image archive: open {layer}: no such file")
                iid = "sha256:" + hashlib.sha256(config).hexdigest()
                self.images[iid] = Image(id=iid, tags=tuple(entry.get("RepoTags") or ()),
                                         labels=dict(parsed["config"].get("Labels") or {}))
                self.configs[iid] = config
                self.chains.update(tuple(diff_ids[:i + 1]) for i in range(len(diff_ids)))
                ids.append(iid)
        return ids

    def save(self, image_id: str) -> Iterator[bytes]:
        """A ``docker save`` archive of the config alone (the fake keeps no layer bytes)."""
        self.calls.append(("save", image_id))
        config = self.configs[image_id]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            for name, blob in ((image_id.split(":")[1] + ".json", config),
                               ("manifest.json", json.dumps([{"Config": image_id.split(":")[1] + ".json"}]).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
        yield out.getvalue()

    def pull(self, ref: str) -> str:
        self.calls.append(("pull", ref))
        host = ref.split("/", 1)[0]
        if host in self.down:
            raise RegistryError(f"cannot pull {ref}: registry {host} does not answer")
        iid = self.registries.get(host, {}).get(ref)
        if iid is None:
            raise RegistryError(f"cannot pull {ref}: manifest unknown")
        img = self.images.get(iid) or Image(id=iid)
        self.images[iid] = Image(id=iid, repo_digests=tuple(sorted({*img.repo_digests, ref})), tags=img.tags,
                                 labels=img.labels)
        return iid

    def push(self, image_id: str, repository: str, tag: str) -> str:
        self.calls.append(("push", (image_id, repository, tag)))
        host = repository.split("/", 1)[0]
        if host in self.down:
            raise RegistryError(f"push to {repository} failed")
        ref = f"{repository}@sha256:{hashlib.sha256(image_id.encode()).hexdigest()}"
        self.registries.setdefault(host, {})[ref] = image_id
        return ref

    def tag(self, image_id: str, ref: str) -> None:
        self.calls.append(("tag", (image_id, ref)))
        img = self.images[image_id]
        self.images[image_id] = Image(id=img.id, repo_digests=img.repo_digests, tags=(*img.tags, ref),
                                      labels=img.labels)

    def remove_image(self, ref: str, force: bool = False) -> bool:
        self.calls.append(("remove_image", ref))
        return self.images.pop(ref, None) is not None

    def create(self, spec: ContainerSpec) -> Container:
        self.calls.append(("create", spec))
        if self.create_error:
            raise JobError(f"the Docker engine refused the job's container: {self.create_error}")
        if spec.image not in self.images:
            raise ImageNotFoundError(f"image {spec.image} not found")
        return FakeContainer(self, spec)

    def gpu_refusal(self, spec: ContainerSpec) -> str | None:
        """What the NVIDIA hook says when it cannot give a container its devices (None: it can, or none asked)."""
        if spec.gpus is None:
            return None
        if self.gpus is None:
            return 'could not select device driver "" with capabilities: [[gpu]]'
        wanted = spec.gpus.device_ids or [str(i) for i in range(self.gpus if spec.gpus.count == -1
                                                                else spec.gpus.count or 0)]
        bad = [d for d in wanted if not (d.isdigit() and int(d) < self.gpus)]
        if bad:
            return (f"OCI runtime create failed: nvidia-container-cli: device error: {bad[0]}: unknown device: "
                    "unknown")
        return None

    def given_gpus(self, spec: ContainerSpec) -> list[int]:
        if spec.gpus is None or self.gpus is None:
            return []
        if spec.gpus.device_ids:
            return [int(d) for d in spec.gpus.device_ids]
        return list(range(self.gpus if spec.gpus.count == -1 else spec.gpus.count or 0))

    def run_output(self, spec: ContainerSpec) -> bytes:
        self.calls.append(("run_output", spec.command))
        self.helpers.append(spec)
        refusal = self.gpu_refusal(spec)
        if refusal:
            raise JobError(f"the job's container did not start: {refusal}")
        if spec.command[:2] == ["nvidia-smi", "-L"]:
            return "".join(f"GPU {i}: {self.gpu_name} (UUID: GPU-{i:08d}-0000-0000-0000-000000000000)\n"
                           for i in self.given_gpus(spec)).encode()
        tool = spec.command[1].rsplit("/", 1)[-1] if len(spec.command) > 1 else ""
        if tool == "probe.py":
            return json.dumps(self.probe).encode()
        if tool == "tensordiff.py":
            return json.dumps({"error": "no tensors in the fake engine"}).encode()
        raise JobError(f"the fake engine cannot run {spec.command}")

    def containers_labelled(self, label: str) -> list[tuple[str, dict[str, str], str]]:
        return []

    def remove_container(self, container_id: str) -> None:
        self.calls.append(("remove_container", container_id))


class FakeContainer(Container):
    _ids = iter(range(1, 10**6))

    def __init__(self, engine: FakeEngine, spec: ContainerSpec) -> None:
        self.engine = engine
        self.spec = spec
        self.id = f"fake{next(self._ids)}"
        self.stopped = threading.Event()
        self.outcome: Outcome | None = None
        self.removed = False

    def start(self) -> Output:
        if self.engine.start_error:
            raise JobError(f"the job's container did not start: {self.engine.start_error}")
        refusal = self.engine.gpu_refusal(self.spec)
        if refusal:
            raise JobError(f"the job's container did not start: {refusal}")
        if self.engine.ulimits_refused and self.spec.ulimits:
            raise JobError("the job's container did not start: OCI runtime create failed: error setting rlimits for "
                           "ready process: error setting rlimit type 8: operation not permitted: unknown")
        job = self.engine.jobs.get(self.spec.image) or (lambda ctx: Outcome())
        return self._run(job)

    def _run(self, job: Job) -> Output:
        self.outcome = job(JobContext(self.spec, self.stopped))
        if self.outcome.stdout:
            yield self.outcome.stdout, None
        if self.outcome.stderr:
            yield None, self.outcome.stderr

    def wait(self) -> ContainerExit:
        assert self.outcome is not None
        if self.stopped.is_set():
            return ContainerExit(143)
        return ContainerExit(self.outcome.exit_code, self.outcome.oom)

    def stop(self, timeout: int = 5) -> None:
        self.stopped.set()

    def remove(self) -> None:
        self.removed = True
        self.engine.calls.append(("remove", self.id))


def venv_install(ctx: JobContext) -> Outcome:
    """What the builder's venv container does, in the fake: a venv folder whose files follow the wheels and the
    in-image files given to it (so that another lock gives another venv layer)."""
    venv = ctx.path("/opt/envkit/venv")
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    for wheel in sorted(ctx.path("/tmp/envkit/wheels").iterdir()):
        (site / (wheel.name + ".installed")).write_bytes(hashlib.sha256(wheel.read_bytes()).digest())
    (site / "requirements.txt").write_bytes(ctx.path("/tmp/envkit/requirements.lock.txt").read_bytes())
    for path in sorted(ctx.path("/tmp/envkit/site").rglob("*")):
        if path.is_file():
            dest = site / path.relative_to(ctx.path("/tmp/envkit/site"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(path.read_bytes())
    return Outcome(stdout=b"compiled 3 files in 8 shards; 0 shards had files left as source\n")
