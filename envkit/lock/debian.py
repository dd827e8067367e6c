"""Debian bases, resolved: the exact .debs a minimal Debian with Python is made of today, as pins for a lock.

``resolve_base`` runs ``mmdebstrap --variant=minbase`` against the mirrors once and reads back what dpkg installed,
with each .deb's pool path and sha256 from apt's Packages index: the pins a lock records (``DebPin``).
:mod:`envkit.image.debian` makes the base again from exactly those pins, on any host. The apt sources come from
this host's configuration (``host_sources``), mapped onto the suite asked for. mmdebstrap is a Debian package
(``apt-get install mmdebstrap``) and runs here as root; its scratch chroot goes to /dev/shm when there is room.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from envkit.errors import BaseImageError
from envkit.lock.model import DebPin

BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
# A base for torch.compile on the GPU: triton compiles a C launcher for each kernel with cc and Python.h, and the
# image build has no network to install them later (envkit/base:<suite>-py<X.Y>-dev).
COMPILER_PACKAGES = ("gcc", "libc6-dev", "python3-dev")
# Debian suites and the python3 they ship: the version is a property of the suite, not a choice.
SUITE_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
# Debian's own mirrors: where a host without apt sources resolves, and where any host looks for a pinned .deb last
# (security updates live under debian-security's pool).
DEFAULT_MIRRORS = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MMDEBSTRAP_TIMEOUT = 1800
SCRATCH_TMPFS = Path("/dev/shm")
SCRATCH_MIN_FREE = 2 * 1024**3  # a python3 minbase chroot takes about 250 MB
_HOST_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
STATUS_FORMAT = r"${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"  # dpkg-query -f
def deb_cache_path(cache_dir: Path, pin: DebPin) -> Path:
    """Where a pinned .deb lives in envkit's cache: ``<cache>/debs/sha256/<h[:2]>/<h>/<file>.deb``."""
    return cache_dir / "debs" / "sha256" / pin.sha256[:2] / pin.sha256 / Path(pin.filename).name


def mmdebstrap_version() -> str:
    """The installed mmdebstrap's version (recorded in a lock: another version may lay files out differently).

    Raises:
        BaseImageError: mmdebstrap is not installed.
    """
    if shutil.which("mmdebstrap") is None:
        raise BaseImageError("mmdebstrap is not installed", hint="install it: apt-get install -y mmdebstrap")
    out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=False).stdout
    return (out.split() or ["unknown", "unknown"])[-1]


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


def default_sources(suite: str) -> list[AptSource]:
    """Debian's own mirrors for ``suite``, its updates and its security updates (a host with no apt sources)."""
    main, security = DEFAULT_MIRRORS
    return [AptSource(main, suite, signed_by=DEBIAN_KEYRING),
            AptSource(main, f"{suite}-updates", signed_by=DEBIAN_KEYRING),
            AptSource(security, f"{suite}-security", signed_by=DEBIAN_KEYRING)]


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
        sources: mirrors; default ``host_sources(suite)``, else Debian's own (``default_sources``).
        cache_dir: when given, the .debs this run downloaded enter the cache (no second download to build).

    Returns:
        The pins, sorted by name.

    Raises:
        BaseImageError: mmdebstrap missing or failing, or an installed package absent from every index.
    """
    sources = list(sources) if sources is not None else (host_sources(suite) or default_sources(suite))
    with tempfile.TemporaryDirectory(prefix="envkit-resolve-") as tmp:
        out = Path(tmp)
        (out / "lists").mkdir()
        (out / "debs").mkdir()
        q = shlex.quote(str(out))
        hooks = [
            f"dpkg-query --admindir=\"$1/var/lib/dpkg\" -W -f '{STATUS_FORMAT}' > {q}/status",
            f"cp \"$1\"/var/lib/apt/lists/*_Packages {q}/lists/",
        ]
        skip = []
        if cache_dir is not None:
            hooks.append(f"cp \"$1\"/var/cache/apt/archives/*.deb {q}/debs/")
            skip = ["--skip=essential/unlink", "--skip=download/empty"]
        run_mmdebstrap(["--variant=minbase", f"--architectures={arch}", f"--include={','.join(packages)}", *skip,
                        *[f"--customize-hook={h}" for h in hooks], suite, "/dev/null", *[s.line() for s in sources]],
                       env={}, what=f"resolving the {suite} base")
        installed = read_status((out / "status").read_text())
        index = _index(sorted((out / "lists").iterdir()), {(n, v, a) for n, v, a in installed})
        missing = [f"{n} {v} ({a})" for n, v, a in installed if (n, v, a) not in index]
        if missing:
            raise BaseImageError(f"installed but in no Packages index: {', '.join(missing[:5])}",
                                 hint="the mirrors changed during the run; resolve again")
        pins = sorted((index[key] for key in installed), key=lambda p: (p.name, p.arch))
        if cache_dir is not None:
            _adopt(out / "debs", pins, cache_dir)
    return pins



def read_status(text: str) -> list[tuple[str, str, str]]:
    """(name, version, arch) of every installed package in ``dpkg-query -f STATUS_FORMAT`` output, sorted."""
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


def run_mmdebstrap(args: list[str], env: dict[str, str], what: str) -> None:
    """Run ``mmdebstrap --mode=root --quiet ARGS`` (as root, scratch in /dev/shm when it has room).

    Raises:
        BaseImageError: mmdebstrap missing, not root, past its time, or failing (its first ``E:`` line).
    """
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


