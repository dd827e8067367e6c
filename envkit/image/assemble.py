"""The final image assembled from a base and a venv tree, without ``docker build``: the same image ID everywhere.

The builder's recipe (``venv_command``), proven to give a byte-identical tree twice:

1. In a container of the base image, with no network, the venv folder bind-mounted from a fresh host folder at
   ``/opt/envkit/venv``, the hash-checked wheels at ``WHEELS_MOUNT``, the requirement lines (``name==version
   --hash=sha256:...``) at ``REQUIREMENTS_MOUNT`` and the in-image files (bootstrap, .pth) at ``SITE_MOUNT``:
   ``python3 -m venv --without-pip``, then the base's own pip (pinned with the base) installs with ``--no-index
   --find-links --require-hashes --no-deps --no-compile``. Requirement lines, not wheel paths: a path makes pip
   write direct_url.json with the build folder in it. RECORD, INSTALLER and REQUESTED come out the same.
2. Bytecode with ``--invalidation-mode unchecked-hash`` (no mtime inside), in ``COMPILE_SHARDS`` fixed shards of
   the sorted file list, each one fresh ``python3 -m compileall`` process with ``PYTHONHASHSEED=0``, as many at
   once as there are cores. marshal flags an object as shared by its reference count, so a .pyc depends on what
   else lives in the compiling process: ``compileall -j 0`` (worker processes forked from a busier parent) wrote
   2 of 7,274 .pyc files of the CPU lock differently from ``-j 1``; fixed shards in fresh processes wrote the same
   bytes as ``-j 1``, at ``-j 0``'s speed, whatever the number of cores.
3. ``assemble`` writes the tree as a layer at ``/opt/envkit/venv`` (``oci.write_layer``: owner 0:0, mtimes clamped
   to the epoch) on top of the base's layers, with a config envkit writes, and returns the ID ``docker load`` gives.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from envkit.settings import CONTAINER_WORKDIR, IMAGE_VENV

if TYPE_CHECKING:  # the layer writer is imported where an image is written: a cache hit needs only the recipe
    from envkit.image import oci

WHEELS_MOUNT = "/tmp/envkit/wheels"
REQUIREMENTS_MOUNT = "/tmp/envkit/requirements.lock.txt"
SITE_MOUNT = "/tmp/envkit/site"
COMPILE_SHARDS = 8  # fixed: the shards, not the host's cores, decide what each process compiles
# Bumped whenever what assemble writes changes in a way the text of venv_command does not show (layer format,
# config fields): part of every image's build key and of the recipe a lock's expected image IDs were pinned with.
RECIPE_VERSION = 1

# Runs under the base's python3 in the install container: standard library only.
_SHARDED_COMPILE = """
import os, subprocess, sys
root, shards = sys.argv[1], int(sys.argv[2])
files = sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.endswith(".py"))
chunks = [files[i * len(files) // shards:(i + 1) * len(files) // shards] for i in range(shards)]
env = dict(os.environ, PYTHONHASHSEED="0")
cmd = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash", "-i", "-"]
running, bad = [], 0
for chunk in chunks:
    while len(running) >= (os.cpu_count() or 1):
        bad += running.pop(0).wait() != 0
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    p.stdin.write("\\n".join(chunk).encode())
    p.stdin.close()
    running.append(p)
bad += sum(p.wait() != 0 for p in running)
# compileall exits 1 when a file uses syntax newer than this Python (test data in some wheels): left as source
print(f"compiled {len(files)} files in {shards} shards; {bad} shards had files left as source")
"""


@dataclass(frozen=True)
class AssembledImage:
    """An image written as a docker archive: its ID, config and layers (the venv layer last)."""

    image_id: str
    config_bytes: bytes
    layers: list[oci.LayerBlob]

    @property
    def venv_layer(self) -> oci.LayerBlob:
        return self.layers[-1]


def venv_command(python: str, venv: str = IMAGE_VENV, site_files: bool = True) -> list[str]:
    """The command that installs the venv in a container of the base image (mounts as the module doc says).

    Args:
        python: the base's Python major.minor (the site-packages folder).
        venv: where the venv is in the image (the mount point of the host folder).
        site_files: copy the in-image files from ``SITE_MOUNT`` into site-packages.
    """
    lines = [
        f"python3 -m venv --without-pip {venv}",
        (f"python3 -m pip --python {venv}/bin/python install --no-index --find-links {WHEELS_MOUNT} --require-hashes "
         f"--no-deps --no-compile --no-cache-dir --disable-pip-version-check -q -r {REQUIREMENTS_MOUNT}"),
    ]
    if site_files:
        lines.append(f"cp -r {SITE_MOUNT}/. {venv}/lib/python{python}/site-packages/")
    lines.append(compile_command(venv))
    return ["sh", "-ec", "\n".join(lines)]


def recipe_text(python: str) -> str:
    """Everything of the assembly recipe that decides the image's bytes, as text (hashed into build keys)."""
    return "\n".join([f"recipe {RECIPE_VERSION}", f"venv {IMAGE_VENV}", f"workdir {CONTAINER_WORKDIR}", "cmd python",
                      *venv_command(python)])


def compile_command(venv: str = IMAGE_VENV) -> str:
    """The shell line that writes the venv's hash-based bytecode in ``COMPILE_SHARDS`` fixed shards."""
    return f"python3 -c {shlex.quote(_SHARDED_COMPILE)} {venv}/lib {COMPILE_SHARDS}"


def config_on_base(base: Mapping[str, Any], *, diff_ids: Sequence[str], epoch: int, env: Mapping[str, str],
                   labels: Mapping[str, str], created_by: str, working_dir: str = CONTAINER_WORKDIR,
                   cmd: Sequence[str] = ("python",)) -> bytes:
    """The config of an image made of the base's layers plus envkit's: the base's settings, ours on top.

    The base's history is kept (a registry base's dates are part of its digest); one record dated at the epoch is
    added for each layer envkit adds. ENV and labels merge by name, ours winning; the other container settings of
    the base (Entrypoint, User, ...) are kept, as ``docker build`` keeps them.
    """
    from envkit.image import oci

    base_cfg = dict(base.get("config") or {})
    merged_env = dict(item.split("=", 1) for item in base_cfg.pop("Env", None) or [] if "=" in item)
    merged_env.update(env)
    merged_labels = {**(base_cfg.pop("Labels", None) or {}), **labels}
    for key in ("WorkingDir", "Cmd"):
        base_cfg.pop(key, None)
    base_diff_ids = list((base.get("rootfs") or {}).get("diff_ids") or [])
    history = [dict(h) for h in base.get("history") or []]
    if not history:  # a base without history: one record per layer, or Docker refuses the count
        history = [oci.history_entry(epoch, f"base layer {i + 1}") for i in range(len(base_diff_ids))]
    added = list(diff_ids)[len(base_diff_ids):]
    history += [oci.history_entry(epoch, created_by) for _ in added]
    return oci.image_config(diff_ids=diff_ids, epoch=epoch, env=merged_env, labels=merged_labels,
                            working_dir=working_dir, cmd=cmd, history=history,
                            architecture=base.get("architecture", "amd64"), os_name=base.get("os", "linux"),
                            variant=base.get("variant"), extra=base_cfg)


def assemble(base: oci.DockerArchive, venv_dir: Path, dest: Path | BinaryIO, *, layer_path: Path, epoch: int,
             env: Mapping[str, str], labels: Mapping[str, str], venv: str = IMAGE_VENV,
             working_dir: str = CONTAINER_WORKDIR, cmd: Sequence[str] = ("python",),
             repo_tags: Sequence[str] = (), created_by: str | None = None) -> AssembledImage:
    """Write the final image: the base's layers, the venv as one more layer, a config envkit writes.

    Args:
        base: the base image (``oci.read_docker_archive`` of ``docker save``, or a base envkit made).
        venv_dir: the host folder the venv was installed into (``venv_command``).
        dest: the docker archive to write: a path, or a stream such as the stdin of ``docker load``.
        layer_path: where to write the venv layer (kept: the same bytes, so a cache can keep it).
        epoch: SOURCE_DATE_EPOCH: mtimes, the config's and the history's dates.
        env: ENV of the image (merged over the base's).
        labels: labels (merged over the base's).
        venv: where the venv is in the image.
        working_dir: WORKDIR.
        cmd: CMD.
        repo_tags: names ``docker load`` gives the image.
        created_by: the history record of the venv layer.

    Returns:
        The image ID ``docker load`` gives, the config and the layers.
    """
    from envkit.image import oci

    layer = oci.write_layer(venv_dir, layer_path, epoch, prefix=venv.strip("/"))
    layers = [*base.layers, layer]
    config = config_on_base(base.config, diff_ids=[blob.diff_id for blob in layers], epoch=epoch, env=env,
                            labels=labels, working_dir=working_dir, cmd=cmd,
                            created_by=created_by or f"envkit: venv at {venv} (pinned wheels, hash-based bytecode)")
    image_id = oci.write_docker_archive(dest, config, layers, repo_tags=repo_tags, epoch=epoch)
    return AssembledImage(image_id=image_id, config_bytes=config, layers=layers)


def base_archive(config_bytes: bytes, layers: Sequence[oci.LayerBlob]) -> oci.DockerArchive:
    """A base envkit made itself (``debian.base_config`` and its layer), in the form ``assemble`` takes."""
    from envkit.image import oci

    return oci.DockerArchive(config_bytes=config_bytes, config=json.loads(config_bytes), layers=list(layers))
