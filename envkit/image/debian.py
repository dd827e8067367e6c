"""A Debian base made reproducibly from pinned .debs: resolve once, then rebuild bit for bit anywhere.

- ``resolve_base`` runs ``mmdebstrap --variant=minbase`` against the mirrors once and reads back what dpkg installed,
  with each .deb's pool path and sha256 from apt's Packages index: the pins a lock records.
- ``fetch_debs`` brings each pinned .deb into envkit's content-addressed cache from whichever source has it.
- ``make_rootfs`` runs mmdebstrap again with ``SOURCE_DATE_EPOCH``, from a flat repository holding exactly the pinned
  .debs (nothing else can slip in, no network is used), every pin named (``--variant=essential --include=<all>``:
  the archive's Priority overrides that minbase reads are not in the .debs), checks dpkg installed exactly the pins,
  and normalises the tarball into a layer (``oci.write_layer_from_tar``). What differs run to run or host to host is
  left out: apt lists and caches, logs, ldconfig's cache (mmdebstrap's own clean-up), /etc/hostname and
  /etc/resolv.conf (the engine provides them), /dev's nodes, the flat repository's mount point.

Two runs from separate caches give the same layer byte for byte (the .pyc files Debian's py3compile writes at
install time included). mmdebstrap is a Debian package (``apt-get install mmdebstrap``) and runs here as root; its
scratch chroot goes to /dev/shm when there is room (half the time of a slow disk).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from envkit.errors import BaseImageError
from envkit.image import oci
from envkit.image.debfetch import DebPin, deb_cache_path, fetch_debs

BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PACKAGES_LISTING = "etc/envkit/base-packages.txt"  # inside the image, as `envkit base` writes it
LABEL_BASE_PYTHON = "io.envkit.base.python"
LABEL_BASE_SOURCE = "io.envkit.base.source"
LABEL_BASE_PACKAGES = "io.envkit.base.packages-sha256"
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
MMDEBSTRAP_TIMEOUT = 1800
SCRATCH_TMPFS = Path("/dev/shm")
SCRATCH_MIN_FREE = 2 * 1024**3  # a python3 minbase chroot takes about 250 MB
_HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
__all__ = [
    "AptSource",
    "DebPin",
    "RootfsResult",
    "base_config",
    "fetch_debs",
    "host_sources",
    "make_rootfs",
    "packages_listing",
    "resolve_base",
]


@dataclass(frozen=True)
class AptSource:
    """One ``deb`` line: a mirror, a suite and its components."""

    uri: str
    suite: str
    components: tuple[str, ...] = ("main",)
    signed_by: str | None = None

    def line(self) -> str:
        opts = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        return f"deb {opts}{self.uri} {self.suite} {' '.join(self.components)}"


@dataclass(frozen=True)
class RootfsResult:
    """A Debian root filesystem as a layer, and what is in it."""

    layer: oci.LayerBlob
    python: str
    listing: str
    seconds: float


def host_sources(suite: str, root: Path = Path("/")) -> list[AptSource]:
    """This host's configured Debian mirrors, for ``suite``.

    The host's suites are mapped onto the one asked for by their suffix: a host on bookworm with ``bookworm``,
    ``bookworm-updates`` and ``bookworm-security`` gives ``trixie``, ``trixie-updates`` and ``trixie-security`` for
    trixie, on the same mirrors. Only ``deb`` entries with the ``main`` component are used.
    """
    found: list[AptSource] = []
    for path in _source_files(root):
        text = path.read_text(errors="replace")
        entries = _deb822(text) if path.suffix == ".sources" else _one_line(text)
        for uri, suites, components, signed_by in entries:
            if "main" not in components:
                continue
            for host_suite in suites:
                _, dash, suffix = host_suite.partition("-")
                source = AptSource(uri.rstrip("/"), suite + (dash + suffix if dash else ""), ("main",), signed_by)
                if source not in found:
                    found.append(source)
    return found


def _source_files(root: Path) -> list[Path]:
    files = []
    for entry in _HOST_SOURCES:
        path = root / entry.relative_to("/")
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    return files


def _deb822(text: str) -> list[tuple[str, list[str], list[str], str | None]]:
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for raw in stanza.splitlines():
            if raw.startswith("#") or ":" not in raw or raw[:1].isspace():
                continue
            key, _, value = raw.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            out.append((uri, fields.get("suites", "").split(), fields.get("components", "").split(),
                        fields.get("signed-by") or None))
    return out


def _one_line(text: str) -> list[tuple[str, list[str], list[str], str | None]]:
    out = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words, signed_by = words[1:], None
        if words and words[0].startswith("["):
            opts = []
            while words:
                opts.append(words.pop(0))
                if opts[-1].endswith("]"):
                    break
            for opt in " ".join(opts).strip("[]").split():
                if opt.startswith("signed-by="):
                    signed_by = opt.split("=", 1)[1]
        if len(words) >= 3:
            out.append((words[0], [words[1]], words[2:], signed_by))
    return out


def resolve_base(suite: str, packages: Sequence[str] = BASE_PACKAGES, arch: str = "amd64",
                 sources: Sequence[AptSource] | None = None, cache_dir: Path | None = None) -> list[DebPin]:
    """The exact .debs ``mmdebstrap --variant=minbase --include=PACKAGES`` installs today, as pins.

    One real mmdebstrap run against the mirrors (apt's resolution, with its Essential and Priority rules, is the
    only faithful one; a simulation skips the essential stage): dpkg's status gives what was installed, apt's
    Packages index each file's pool path, size and sha256.

    Args:
        suite: Debian suite (bookworm, trixie).
        packages: what to install on top of minbase.
        arch: Debian architecture.
        sources: mirrors; default ``host_sources(suite)``.
        cache_dir: when given, the .debs this run downloaded enter the cache (no second download to build).

    Returns:
        The pins, sorted by name.

    Raises:
        BaseImageError: mmdebstrap missing or failing, or an installed package absent from every index.
    """
    sources = list(sources) if sources is not None else host_sources(suite)
    if not sources:
        raise BaseImageError(f"no Debian mirror is configured for {suite}",
                             hint="configure apt (/etc/apt/sources.list.d/debian.sources) or pass a mirror URL")
    with tempfile.TemporaryDirectory(prefix="envkit-resolve-") as tmp:
        out = Path(tmp)
        (out / "lists").mkdir()
        (out / "debs").mkdir()
        q = shlex.quote(str(out))
        hooks = [
            f"dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f '{_STATUS_FORMAT}' > {q}/status",
            f"cp \"$1\"/var/lib/apt/lists/*_Packages {q}/lists/",
        ]
        skip = []
        if cache_dir is not None:
            hooks.append(f"cp \"$1\"/var/cache/apt/archives/*.deb {q}/debs/")
            skip = ["--skip=essential/unlink", "--skip=download/empty"]
        _mmdebstrap(["--variant=minbase", f"--architectures={arch}", f"--include={','.join(packages)}", *skip,
                     *[f"--customize-hook={h}" for h in hooks], suite, "/dev/null", *[s.line() for s in sources]],
                    env={}, what=f"resolving the {suite} base")
        installed = _read_status((out / "status").read_text())
        index = _index(sorted((out / "lists").iterdir()), {(n, v, a) for n, v, a in installed})
        missing = [f"{n} {v} ({a})" for n, v, a in installed if (n, v, a) not in index]
        if missing:
            raise BaseImageError(f"installed but in no Packages index: {', '.join(missing[:5])}",
                                 hint="the mirrors changed during the run; resolve again")
        pins = sorted((index[key] for key in installed), key=lambda p: (p.name, p.arch))
        if cache_dir is not None:
            _adopt(out / "debs", pins, cache_dir)
    return pins


_STATUS_FORMAT = r"${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"


def _read_status(text: str) -> list[tuple[str, str, str]]:
    rows = []
    for raw in text.splitlines():
        name, version, arch, status = (raw.split("\t") + ["", "", "", ""])[:4]
        if name and status.strip() == "ii":
            rows.append((name, version, arch))
    return sorted(rows)


def _index(lists: Iterable[Path], wanted: set[tuple[str, str, str]]) -> dict[tuple[str, str, str], DebPin]:
    """Pins for the wanted (name, version, arch) from apt's Packages files."""
    found: dict[tuple[str, str, str], DebPin] = {}
    for path in lists:
        with path.open(encoding="utf-8", errors="replace") as fh:
            fields: dict[str, str] = {}
            for raw in [*fh, "\n"]:
                if raw.strip():
                    if not raw[0].isspace():
                        key, _, value = raw.partition(":")
                        fields[key] = value.strip()
                    continue
                key = (fields.get("Package", ""), fields.get("Version", ""), fields.get("Architecture", ""))
                if key in wanted and key not in found:
                    found[key] = DebPin(name=key[0], version=key[1], arch=key[2], filename=fields["Filename"],
                                        sha256=fields["SHA256"], size=int(fields["Size"]))
                fields = {}
    return found


def _adopt(folder: Path, pins: Sequence[DebPin], cache_dir: Path) -> None:
    """Move the .debs a resolve run downloaded into the cache, each under its verified sha256."""
    by_hash = {pin.sha256: pin for pin in pins}
    for path in folder.glob("*.deb"):
        h = hashlib.sha256(path.read_bytes()).hexdigest()
        pin = by_hash.get(h)
        if pin is None:
            continue
        dest = deb_cache_path(cache_dir, pin)
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))


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
            f"dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f '{_STATUS_FORMAT}' > {q['out']}/status",
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
        _mmdebstrap(["--variant=essential", f"--architectures={arch}",
                     f"--include={','.join(sorted({p.name for p in pins}))}",
                     # dpkg's fsync per file costs minutes on a slow disk; the result is a tarball anyway
                     "--dpkgopt=force-unsafe-io",
                     "--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount",
                     # the automount hook leaves the repository's mount point behind: remove it
                     f"--customize-hook=rmdir \"$1{repo}\" && rmdir \"$1{repo.parent}\"",
                     *[f"--customize-hook={h}" for h in hooks],
                     suite, str(rootfs), f"deb [trusted=yes] file://{repo} ./"],
                    env={"SOURCE_DATE_EPOCH": str(epoch)}, what=f"making the {suite} base")
        installed = set(_read_status((out / "status").read_text()))
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


def _mmdebstrap(args: list[str], env: dict[str, str], what: str) -> None:
    if shutil.which("mmdebstrap") is None:
        raise BaseImageError("mmdebstrap is not installed", hint="install it: apt-get install -y mmdebstrap")
    if os.geteuid() != 0:
        raise BaseImageError(f"{what} needs root (mmdebstrap chroots)", hint="run it with sudo")
    full_env = {**os.environ, **env, "LC_ALL": "C.UTF-8"}
    # The chroot is scratch (only the tarball is kept): in memory it takes half the time of a slow disk.
    if _free_bytes(SCRATCH_TMPFS) >= SCRATCH_MIN_FREE:
        full_env["TMPDIR"] = str(SCRATCH_TMPFS)
    try:
        proc = subprocess.run(["mmdebstrap", "--mode=root", "--quiet", *args], capture_output=True, text=True,
                              env=full_env, timeout=MMDEBSTRAP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BaseImageError(f"{what}: mmdebstrap ran past {MMDEBSTRAP_TIMEOUT} s") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.startswith("E:")] or \
            (proc.stderr + proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BaseImageError(f"{what}: mmdebstrap failed: {lines[0][:300]}",
                             hint="check that Debian's mirror is reachable (or pass a mirror URL)")


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def base_config(rootfs: RootfsResult, suite: str, epoch: int, packages: Sequence[str] = BASE_PACKAGES,
                arch: str = "amd64") -> bytes:
    """The base image's config: one layer, the labels `envkit base` sets, dated at the epoch."""
    source = f"mmdebstrap --variant=minbase --include={','.join(packages)} {suite} (pinned .debs)"
    labels = {
        LABEL_BASE_PYTHON: rootfs.python,
        LABEL_BASE_SOURCE: f"envkit base debian {suite}",
        LABEL_BASE_PACKAGES: hashlib.sha256(rootfs.listing.encode()).hexdigest(),
    }
    return oci.image_config(diff_ids=[rootfs.layer.diff_id], epoch=epoch, env=BASE_ENV, labels=labels,
                            cmd=["python3"], history=[oci.history_entry(epoch, source)], architecture=arch)


def pins_as_dicts(pins: Sequence[DebPin]) -> list[dict]:
    """The pins as plain data, for a lockfile."""
    return [asdict(p) for p in pins]
