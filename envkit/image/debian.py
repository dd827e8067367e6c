"""A Debian base made reproducibly from pinned .debs: the same layer bit for bit on every run and host.

- ``fetch_debs`` (:mod:`envkit.image.debfetch`) brings each pinned .deb into envkit's content-addressed cache from
  whichever source has it (the pins come from :func:`envkit.lock.debian.resolve_base`, through a lock).
- ``make_rootfs`` runs mmdebstrap with ``SOURCE_DATE_EPOCH``, from a flat repository holding exactly the pinned
  .debs (nothing else can slip in, no network is used), every pin named (``--variant=essential --include=<all>``:
  the archive's Priority overrides that minbase reads are not in the .debs), checks dpkg installed exactly the pins,
  and normalises the tarball into a layer (``oci.write_layer_from_tar``). What differs run to run or host to host is
  left out: apt lists and caches, logs, ldconfig's cache (mmdebstrap's own clean-up), /etc/hostname and
  /etc/resolv.conf (the engine provides them), /dev's nodes, the flat repository's mount point.
- ``base_config`` writes the base's image config (dated at the epoch), so its image ID is known before any engine
  sees it.

Two runs from separate caches give the same layer byte for byte (the .pyc files Debian's py3compile writes at
install time included).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from envkit.errors import BaseImageError
from envkit.image import oci
from envkit.image.debfetch import fetch_debs
from envkit.lock.debian import BASE_PACKAGES, DEBIAN_KEYRING, STATUS_FORMAT, read_status, run_mmdebstrap
from envkit.lock.model import DebPin
from envkit.settings import LABEL_BASE_COMPILER, LABEL_BASE_PACKAGES, LABEL_BASE_PYTHON, LABEL_BASE_SOURCE

PACKAGES_LISTING = "etc/envkit/base-packages.txt"  # inside the image, as `envkit base` writes it
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class RootfsResult:
    """A Debian root filesystem as a layer, and what is in it."""

    layer: oci.LayerBlob
    python: str
    listing: str
    seconds: float


def packages_listing(pins: Sequence[DebPin]) -> str:
    """/etc/envkit/base-packages.txt: ``name=version`` per line, sorted, as `envkit base` writes it."""
    return "".join(f"{line}\n" for line in sorted(f"{p.name}={p.version}" for p in pins))


def make_rootfs(pins: Sequence[DebPin], cache_dir: Path, epoch: int, dest_tar: Path, *, suite: str,
                mirrors: Sequence[str] = (), arch: str = "amd64",
                step: Callable[[str], None] = lambda _msg: None) -> RootfsResult:
    """Make the Debian root filesystem of exactly these .debs, bit for bit the same on every run and host.

    Args:
        pins: from ``resolve_base`` (the lock's record).
        cache_dir: envkit's cache root; the .debs are taken from (and fetched into) ``<cache>/debs``.
        epoch: SOURCE_DATE_EPOCH, for mmdebstrap and for the layer's mtimes.
        dest_tar: the layer file to write.
        suite: the suite the pins came from (for the image's apt sources).
        mirrors: mirror URLs to fetch missing .debs from (none: the cache and /var/cache/apt/archives only).
        arch: Debian architecture.
        step: called with a short description as each stage starts (progress).

    Returns:
        The layer, the image's Python version, the package listing and the seconds taken.

    Raises:
        FetchError / HashMismatchError: a .deb no source has, or one that does not match its pin.
        BaseImageError: mmdebstrap missing or failing, or an installed set that is not the pinned one.
    """
    t0 = time.monotonic()
    step(f"checking {len(pins)} pinned .debs")
    debs = fetch_debs(pins, cache_dir, mirrors)
    listing = packages_listing(pins)
    # Under /tmp whatever TMPDIR says: the automount hook mirrors the repository's path inside the chroot, and only
    # /tmp/<name>/repo can be removed again without leaving a host-specific folder in the image.
    with tempfile.TemporaryDirectory(prefix="envkit-rootfs-", dir="/tmp") as tmp:
        work = Path(tmp)
        repo = _flat_repo(work / "repo", pins, debs, suite)
        (work / "listing").write_text(listing)
        (work / "debian.sources").write_text(_image_sources(suite))
        out = work / "out"
        out.mkdir()
        q = {k: shlex.quote(str(v)) for k, v in {"out": out, "work": work, "repo": repo}.items()}
        hooks = [
            f"dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f '{STATUS_FORMAT}' > {q['out']}/status",
            "chroot \"$1\" python3 -c 'import platform; print(platform.python_version())' > " + q["out"] + "/python",
            "umask 022 && mkdir -p \"$1/etc/envkit\" && cp " + q["work"] + "/listing \"$1/" + PACKAGES_LISTING + "\"",
            # the image's apt sources are Debian's, not the flat repository of this run
            "umask 022 && rm -f \"$1/etc/apt/sources.list\" && mkdir -p \"$1/etc/apt/sources.list.d\" && cp "
            + q["work"] + "/debian.sources \"$1/etc/apt/sources.list.d/debian.sources\"",
            "rm -f \"$1/etc/hostname\" \"$1/etc/resolv.conf\" \"$1/etc/dpkg/dpkg.cfg.d/99mmdebstrap\"",
        ]
        rootfs = work / "rootfs.tar"
        step(f"mmdebstrap {suite} from {len(pins)} pinned .debs")
        # Every pinned package is named: the repository holds nothing else, so exactly the pins are installed
        # (the archive's Priority overrides, which minbase reads, are not in the .debs' own control files).
        run_mmdebstrap(["--variant=essential", f"--architectures={arch}",
                     f"--include={','.join(sorted({p.name for p in pins}))}",
                     # dpkg's fsync per file costs minutes on a slow disk; the result is a tarball anyway
                     "--dpkgopt=force-unsafe-io",
                     "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
                     # the automount hook leaves the repository's mount point behind: remove it
                     f"--customize-hook=rmdir \"$1{repo}\" && rmdir \"$1{repo.parent}\"",
                     *[f"--customize-hook={h}" for h in hooks],
                     suite, str(rootfs), f"deb [trusted=yes] file://{repo} ./"],
                    env={"SOURCE_DATE_EPOCH": str(epoch)}, what=f"making the {suite} base")
        installed = set(read_status((out / "status").read_text()))
        pinned = {(p.name, p.version, p.arch) for p in pins}
        if installed != pinned:
            extra = sorted(f"{n}={v}" for n, v, _ in installed - pinned)
            missing = sorted(f"{n}={v}" for n, v, _ in pinned - installed)
            raise BaseImageError(f"mmdebstrap did not install the pinned set (missing: {missing[:5]}, "
                                 f"extra: {extra[:5]})", hint="resolve the base again (the pins are inconsistent)")
        step("normalising the root filesystem into a layer")
        layer = oci.write_layer_from_tar(rootfs, dest_tar, epoch, exclude=("dev/*",))
        python = (out / "python").read_text().strip()
    return RootfsResult(layer=layer, python=python, listing=listing, seconds=time.monotonic() - t0)


def _flat_repo(repo: Path, pins: Sequence[DebPin], debs: Sequence[Path], suite: str) -> Path:
    """A trusted flat apt repository of exactly these .debs (Packages built from each .deb's control file)."""
    repo.mkdir(parents=True)
    stanzas = []
    for pin, deb in sorted(zip(pins, debs), key=lambda pd: (pd[0].name, pd[0].arch)):
        name = Path(pin.filename).name
        try:
            os.link(deb, repo / name)
        except OSError:  # another filesystem: copy
            shutil.copyfile(deb, repo / name)
        proc = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BaseImageError(f"dpkg-deb cannot read {deb}: {proc.stderr.strip()[:200]}")
        stanzas.append(f"{proc.stdout.rstrip()}\nFilename: ./{name}\nSize: {pin.size}\nSHA256: {pin.sha256}\n")
    packages = "\n".join(stanzas).encode()
    (repo / "Packages").write_bytes(packages)
    # mmdebstrap takes the Essential:yes set from the archive named like the suite: the Release names it
    arches = " ".join(sorted({p.arch for p in pins}))
    (repo / "Release").write_text(
        f"Suite: {suite}\nCodename: {suite}\nArchitectures: {arches}\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")
    return repo


def _image_sources(suite: str) -> str:
    """Debian's own apt sources for the suite, as the official images carry them."""
    stanza = "Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By: " + DEBIAN_KEYRING + "\n"
    if suite in ("sid", "unstable"):
        return stanza.format(uri="http://deb.debian.org/debian", suites=suite)
    return (stanza.format(uri="http://deb.debian.org/debian", suites=f"{suite} {suite}-updates") + "\n"
            + stanza.format(uri="http://deb.debian.org/debian-security", suites=f"{suite}-security"))


def base_config(rootfs: RootfsResult, suite: str, epoch: int, packages: Sequence[str] = BASE_PACKAGES,
                arch: str = "amd64") -> bytes:
    """The base image's config: one layer, the labels `envkit base` sets, dated at the epoch."""
    source = f"mmdebstrap --variant=minbase --include={','.join(packages)} {suite} (pinned .debs)"
    compiler = "gcc" in packages
    labels = {
        LABEL_BASE_PYTHON: rootfs.python,
        LABEL_BASE_SOURCE: f"envkit base debian {suite}" + (" --compiler" if compiler else ""),
        LABEL_BASE_PACKAGES: hashlib.sha256(rootfs.listing.encode()).hexdigest(),
        **({LABEL_BASE_COMPILER: "gcc"} if compiler else {}),
    }
    return oci.image_config(diff_ids=[rootfs.layer.diff_id], epoch=epoch, env=BASE_ENV, labels=labels,
                            cmd=["python3"], history=[oci.history_entry(epoch, source)], architecture=arch)


def pins_as_dicts(pins: Sequence[DebPin]) -> list[dict]:
    """The pins as plain data, for a lockfile."""
    return [asdict(p) for p in pins]
