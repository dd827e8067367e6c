"""Base images: pinning one by digest, and making one from Debian's packages for air-gapped hosts.

``envkit base debian bookworm --python 3.11`` runs ``debootstrap --variant=minbase`` into a folder, records the
package list it installed (inside the image at /etc/envkit/base-packages.txt and as a label hash), and imports the
folder with ``docker import``. No registry is needed, so it works where nothing can be pulled.

``--compiler`` adds gcc, the C library's headers and Python's (``Python.h``): what triton needs to compile its
launcher when torch.compile runs on a GPU (and Inductor's C++ on the CPU needs g++: not included). Image builds have
no network, so a lock with triton needs such a base; the image is labelled ``io.envkit.base.compiler``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envkit.engine import Engine
from envkit.errors import BaseImageError, SpecError
from envkit.settings import LABEL_BASE_COMPILER, LABEL_BASE_PACKAGES, LABEL_BASE_PYTHON, LABEL_BASE_SOURCE, cache_dir

# Debian suites and the python3 they ship: the version is a property of the suite, not a choice.
SUITE_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
COMPILER_PACKAGES = ("gcc", "libc6-dev", "python3-dev")  # triton's launcher: cc and Python.h


@dataclass(frozen=True)
class BaseResult:
    image_id: str
    tag: str
    python: str
    packages: list[str]
    seconds: float


def default_tag(suite: str, python: str, compiler: bool = False) -> str:
    return f"envkit/base:{suite}-py{python}" + ("-dev" if compiler else "")


def make_base(
    engine: Engine,
    suite: str,
    python: str,
    tag: str | None = None,
    mirror: str | None = None,
    step: Callable[[str], None] = lambda _msg: None,
    compiler: bool = False,
) -> BaseResult:
    """debootstrap a minimal Debian with python3, record its packages, and import it as an image.

    Args:
        engine: the engine to import into.
        suite: Debian suite (bookworm, trixie, bullseye).
        python: the Python major.minor the caller expects; must be the suite's.
        tag: image name; default envkit/base:<suite>-py<python>.
        mirror: Debian mirror URL; default debootstrap's.
        step: called with a short description as each stage starts (progress).
        compiler: add gcc and Python's headers (torch.compile with triton); default tag ``...-dev``.

    Raises:
        SpecError: unknown suite or a Python the suite does not ship.
        BaseImageError: not root, debootstrap missing or failing, import failing.
    """
    import time

    if suite not in SUITE_PYTHON:
        raise SpecError(f"unknown Debian suite {suite!r}", hint=f"choose one of {', '.join(SUITE_PYTHON)}")
    if SUITE_PYTHON[suite] != python:
        raise SpecError(f"Debian {suite} ships Python {SUITE_PYTHON[suite]}, not {python}",
                        hint=f"use --python {SUITE_PYTHON[suite]}, or a suite that ships {python}")
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed", hint="install it: apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise BaseImageError("making a base image needs root (debootstrap chroots)", hint="run it with sudo")
    tag = tag or default_tag(suite, python, compiler)
    packages_wanted = BASE_PACKAGES + (COMPILER_PACKAGES if compiler else ())
    t0 = time.monotonic()
    debs = cache_dir() / "debootstrap" / suite
    debs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="envkit-base-") as tmp:
        root = Path(tmp) / "rootfs"
        step(f"debootstrap {suite} (minbase + python3{' + gcc' if compiler else ''})")
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages_wanted)}",
               f"--cache-dir={debs}", suite, str(root)]
        if mirror:
            cmd.append(mirror)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["no output"]
            raise BaseImageError(f"debootstrap failed: {tail[0]}",
                                 hint="check that Debian's package mirror is reachable (or pass --mirror)")
        step("recording the installed packages")
        packages = _installed_packages(root)
        full_python = _chroot_python(root)
        listing = "\n".join(packages) + "\n"
        (root / "etc" / "envkit").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "envkit" / "base-packages.txt").write_text(listing)
        # Caches and logs that only differ run to run and would bloat the image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        step(f"importing the root filesystem as {tag}")
        source = f"envkit base debian {suite} --python {python}" + (" --compiler" if compiler else "")
        changes = [
            *([f"LABEL {LABEL_BASE_COMPILER}=gcc"] if compiler else []),
            f"LABEL {LABEL_BASE_PYTHON}={full_python}",
            f'LABEL {LABEL_BASE_SOURCE}="{source}"',
            f"LABEL {LABEL_BASE_PACKAGES}={hashlib.sha256(listing.encode()).hexdigest()}",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8",
            'CMD ["python3"]',
        ]
        tar_path = Path(tmp) / "rootfs.tar"
        with tarfile.open(tar_path, "w") as tar:
            tar.add(root, arcname=".", filter=_numeric_owner)
        shutil.rmtree(root, ignore_errors=True)
        image_id = engine.import_rootfs(tar_path, tag, changes)
    return BaseResult(image_id=image_id, tag=tag, python=full_python, packages=packages,
                      seconds=time.monotonic() - t0)


def _numeric_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uname = info.gname = ""
    return info


def _installed_packages(root: Path) -> list[str]:
    proc = subprocess.run(["chroot", str(root), "dpkg-query", "-W", "-f", "${Package}=${Version}\\n"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BaseImageError(f"cannot list the packages installed in the base: {proc.stderr.strip()[:200]}")
    return sorted(line for line in proc.stdout.splitlines() if line)


def _chroot_python(root: Path) -> str:
    proc = subprocess.run(["chroot", str(root), "python3", "-c", "import platform;print(platform.python_version())"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BaseImageError("python3 does not run in the new base filesystem")
    return proc.stdout.strip()
