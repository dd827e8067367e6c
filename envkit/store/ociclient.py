"""A small client of the OCI distribution API (blobs, manifests, tags) on the standard library's ``http.client``.

One keep-alive connection per registry: a run's artifact is many small blobs, and three round trips each (HEAD, POST,
PUT) are cheap only when no TCP or TLS handshake comes with them. A loopback registry (``localhost``, ``127.0.0.0/8``,
``::1``) is spoken to in plain HTTP, as Docker does by default; any other in HTTPS with the system's trust store.
No login yet: a 401 is one clear line. Nothing here retries with back-off: an unreachable registry is said at once.

Every answer of the registry is untrusted: bodies are read with a cap, texts it sends are shortened and stripped of
control characters before they reach a message, and blobs are hashed as they stream (see :meth:`get_blob`).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import ipaddress
import json
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

from envkit.errors import BundleError, RegistryError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
# What an image pushed by a Docker engine may be stored as (a lookup by digest must accept its type).
IMAGE_MANIFESTS = (OCI_MANIFEST, "application/vnd.oci.image.index.v1+json",
                   "application/vnd.docker.distribution.manifest.v2+json",
                   "application/vnd.docker.distribution.manifest.list.v2+json")
DIGEST_PATTERN = r"sha256:[0-9a-f]{64}"
TAG_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = rf"(?:\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*)"
_REFERENCE = re.compile(rf"(?P<registry>{_HOST}(?::[0-9]{{1,5}})?)/(?P<repository>{_COMPONENT}(?:/{_COMPONENT})*)"
                        rf"(?::(?P<tag>{TAG_PATTERN}))?(?:@(?P<digest>{DIGEST_PATTERN}))?")
_CHUNK = 1 << 20
_ERROR_BODY_BYTES = 64 * 1024
_MAX_REDIRECTS = 5
_LOGIN_HINT = "use a registry that allows anonymous pushes and pulls (a docker-registry on 127.0.0.1 does)"


@dataclass(frozen=True)
class Reference:
    """``REGISTRY/REPOSITORY[:TAG][@sha256:...]``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f":{self.tag}" if self.tag else "") \
            + (f"@{self.digest}" if self.digest else "")


def parse_reference(text: str, *, allow_tag: bool = True, allow_digest: bool = True,
                    require_digest: bool = False) -> Reference:
    """Parse a registry reference; the registry part is required (a host with a dot or a port, or localhost).

    Raises:
        RegistryError: quoting the text, with the form expected.
    """
    m = _REFERENCE.fullmatch(text) if isinstance(text, str) else None
    host = m["registry"] if m else ""
    if m is None or not ("." in host or ":" in host or host == "localhost") or len(m["repository"]) > 255 \
            or (m["tag"] and not allow_tag) or (m["digest"] and not allow_digest) \
            or (require_digest and not m["digest"]):
        form = "REGISTRY/REPO@sha256:<64 hex>" if require_digest else "REGISTRY/REPO" + (
            "[:TAG]" if allow_tag else "") + ("[@sha256:...]" if allow_digest else "")
        raise RegistryError(f"{_clean(str(text), 120)!r} is not a registry reference of the form {form}",
                            hint="e.g. 127.0.0.1:5000/team/runs; the registry's host comes first")
    return Reference(host, m["repository"], m["tag"], m["digest"])


def is_loopback(registry: str) -> bool:
    """Whether ``registry`` (host[:port]) is this machine: such registries are spoken to in plain HTTP."""
    host = registry[1:registry.index("]")] if registry.startswith("[") else registry.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryClient:
    """Blobs and manifests of one registry, over one kept-alive connection. Use it as a context manager."""

    def __init__(self, registry: str, timeout: float = 60.0) -> None:
        self.registry = registry
        self.scheme = "http" if is_loopback(registry) else "https"
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._used = False
        self._detour: RegistryClient | None = None  # where the last blob download was redirected

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._detour is not None:
            self._detour.close()
            self._detour = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- blobs ------------------------------------------------------------------------------------------------------
    def has_blob(self, repository: str, digest: str, size: int) -> bool:
        """Whether the registry holds the blob (with that size) in the repository."""
        resp = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", what=f"checking blob {digest[:19]}",
                             expect=(200, 404))
        return resp.status == 200 and resp.getheader("Content-Length") == str(size)

    def put_blob(self, repository: str, source: bytes | Path, digest: str, name: str,
                 advance: Callable[[int], None] | None, size: int | None = None) -> bool:
        """Upload a blob unless the registry has it (POST, then one PUT with the digest). True when uploaded.

        Raises:
            BundleError: the registry computed another digest (the file changed since it was hashed).
        """
        size = len(source) if isinstance(source, bytes) else size
        assert size is not None
        if self.has_blob(repository, digest, size):
            if advance:
                advance(size)
            return False
        what = f"uploading {name}"
        resp = self._request("POST", f"/v2/{repository}/blobs/uploads/", what=what, expect=(202,),
                             headers={"Content-Length": "0"})
        location = resp.getheader("Location") or ""
        target = self._same_origin(location, what)
        target += ("&" if "?" in target else "?") + "digest=" + quote(digest)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if isinstance(source, bytes):
            resp = self._request("PUT", target, what=what, body=source, headers=headers, expect=(201, 400))
            if advance:
                advance(size)
        else:
            try:
                with open(source, "rb") as fh:
                    resp = self._request("PUT", target, what=what, body=_Reader(fh, size, advance), headers=headers,
                                         expect=(201, 400))
            except OSError as exc:
                raise BundleError(f"cannot read {name} ({source}): {exc.strerror or exc}") from exc
        if resp.status == 400:
            code, message = _error_of(resp.body)
            if code == "DIGEST_INVALID":
                raise BundleError(f"{name} does not hash to {digest[:19]}... (changed since it was hashed)",
                                  hint="the run folder was altered; push an intact run")
            raise RegistryError(f"registry {self.registry} refused {what}: {code or 'HTTP 400'} {message}")
        return True

    def get_blob(self, repository: str, digest: str, size: int, name: str, out: IO[bytes],
                 advance: Callable[[int], None] | None) -> None:
        """Stream a blob into ``out``, hashing it; never more than ``size`` bytes are accepted.

        Raises:
            BundleError: the blob is longer or shorter than ``size``, or does not hash to ``digest`` (named).
        """
        resp = self._open_blob(repository, digest, name)
        h = hashlib.sha256()
        got = 0
        buf = memoryview(bytearray(_CHUNK))  # one buffer, filled in place: no copy per chunk
        try:
            while True:
                try:
                    n = resp.readinto(buf[:min(_CHUNK, size - got + 1)])  # a byte past size shows a longer blob
                except (OSError, http.client.HTTPException) as exc:
                    raise RegistryError(f"lost registry {self.registry} while downloading {name} "
                                        f"({_reason(exc)})") from exc
                if not n:
                    break
                chunk = buf[:n]
                got += n
                if got > size:
                    raise BundleError(f"{name}: the registry sent more than the {size} bytes the manifest says",
                                      hint="the registry's copy was altered; do not use this artifact")
                h.update(chunk)
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise BundleError(f"cannot write {name}: {exc.strerror or exc}") from exc
                if advance:
                    advance(n)
        except BaseException:
            self.close()  # the rest of the body is unread: this connection cannot carry another request
            raise
        if got != size:
            raise BundleError(f"{name}: the registry sent {got} bytes, the manifest says {size}",
                              hint="the registry's copy was altered; do not use this artifact")
        if "sha256:" + h.hexdigest() != digest:
            raise BundleError(f"{name} does not match its sha256 in the manifest (altered in the registry)",
                              hint="do not use this artifact; push the run again from an intact copy")

    def get_blob_bytes(self, repository: str, digest: str, size: int, name: str, max_bytes: int = 1 << 20) -> bytes:
        """A small blob (a config) in memory, checked like :meth:`get_blob`."""
        if size > max_bytes:
            raise BundleError(f"{name} of the artifact is {size} bytes, more than the {max_bytes} allowed")

        sink = io.BytesIO()
        self.get_blob(repository, digest, size, name, sink, None)
        return sink.getvalue()

    # --- manifests --------------------------------------------------------------------------------------------------
    def put_manifest(self, repository: str, body: bytes, reference: str | None = None) -> str:
        """Store an OCI manifest under its digest (or ``reference``, a tag). Returns its digest."""
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        where = reference or digest
        resp = self._request("PUT", f"/v2/{repository}/manifests/{where}", what=f"storing manifest {where[:19]}",
                             body=body, headers={"Content-Type": OCI_MANIFEST}, expect=(201,))
        said = resp.getheader("Docker-Content-Digest")
        if said is not None and said != digest:
            raise RegistryError(f"registry {self.registry} stored the manifest as {_clean(said, 80)}, not {digest}")
        return digest

    def has_manifest(self, repository: str, reference: str) -> bool:
        """Whether the repository holds a manifest (of an artifact or an image) by that digest or tag."""
        resp = self._request("HEAD", f"/v2/{repository}/manifests/{reference}", what=f"checking {reference[:80]}",
                             headers={"Accept": ", ".join(IMAGE_MANIFESTS)}, expect=(200, 404))
        return resp.status == 200

    def get_manifest(self, repository: str, reference: str, max_bytes: int) -> bytes | None:
        """The bytes of an OCI manifest by digest or tag (at most ``max_bytes``); None when there is none.

        Raises:
            RegistryError: a refusal other than "not found". BundleError: larger than ``max_bytes``.
        """
        resp = self._request("GET", f"/v2/{repository}/manifests/{reference}", what=f"fetching {reference[:80]}",
                             headers={"Accept": OCI_MANIFEST}, expect=(200, 404), read_limit=max_bytes + 1)
        if resp.status == 404:
            return None
        if len(resp.body) > max_bytes:
            self.close()
            raise BundleError(f"the manifest {reference[:80]} is larger than {max_bytes >> 20} MiB")
        return resp.body

    # --- HTTP -------------------------------------------------------------------------------------------------------
    def _open_blob(self, repository: str, digest: str, name: str) -> http.client.HTTPResponse:
        """A blob's response, its body unread; redirects (object storage behind the registry) are followed."""
        what = f"downloading {name}"
        resp = self._request("GET", f"/v2/{repository}/blobs/{digest}", what=what, expect=(200, 307, 302, 303),
                             stream=True)
        for _ in range(_MAX_REDIRECTS):
            if resp.status == 200:
                return resp.raw
            location = resp.getheader("Location") or ""
            resp.raw.read(_ERROR_BODY_BYTES)  # a redirect's short body, so that its connection can be reused
            url = urlsplit(location)
            if url.scheme not in ("http", "https") or (self.scheme == "https" and url.scheme == "http"):
                raise RegistryError(f"registry {self.registry} redirected {what} to {_clean(location, 120)!r}")
            if self._detour is not None:
                self._detour.close()
            self._detour = RegistryClient(url.netloc, self.timeout)  # object storage: no envkit headers to carry
            self._detour.scheme = url.scheme
            resp = self._detour._request("GET", url.path + (f"?{url.query}" if url.query else ""), what=what,
                                         expect=(200, 307, 302, 303), stream=True)
        if resp.status != 200:
            raise RegistryError(f"registry {self.registry} redirected {what} more than {_MAX_REDIRECTS} times")
        return resp.raw

    def _same_origin(self, location: str, what: str) -> str:
        url = urlsplit(location)
        if url.netloc and (url.netloc != self.registry or url.scheme != self.scheme) or not url.path.startswith("/v2/"):
            raise RegistryError(f"registry {self.registry} sent an upload location {_clean(location, 120)!r} for "
                                f"{what}, which is not on the registry itself")
        return url.path + (f"?{url.query}" if url.query else "")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.scheme == "http":
                self._conn = http.client.HTTPConnection(self.registry, timeout=self.timeout, blocksize=_CHUNK)
            else:
                self._conn = http.client.HTTPSConnection(self.registry, timeout=self.timeout, blocksize=_CHUNK,
                                                         context=ssl.create_default_context())
            self._used = False
            self._conn.connect()
            # http.client sends a file body apart from its headers: without TCP_NODELAY, Nagle's algorithm and
            # the registry's delayed ACK hold each small upload back by 40 ms.
            self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._conn

    def _request(self, method: str, target: str, *, what: str, expect: tuple[int, ...], body: Any = None,
                 headers: dict[str, str] | None = None, stream: bool = False,
                 read_limit: int | None = None) -> _Response:
        start = body.tell() if hasattr(body, "tell") else None
        for attempt in (0, 1):
            reused = self._used and self._conn is not None
            try:
                conn = self._connection()
                conn.request(method, target, body=body, headers={"User-Agent": "envkit", **(headers or {})})
                raw = conn.getresponse()
                self._used = True
                break
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
                self.close()  # a kept-alive connection the registry closed meanwhile: once more on a fresh one
                if attempt or not reused:
                    raise self._unreachable(exc, what) from exc
                if start is not None:
                    body.seek(start)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unreachable(exc, what) from exc
        if raw.status not in expect:
            try:
                data = raw.read(_ERROR_BODY_BYTES)
            except (OSError, http.client.HTTPException):
                data = b""
            self.close()
            raise self._refusal(raw, data, what)
        if stream:
            return _Response(raw, b"")
        try:
            data = raw.read() if read_limit is None else raw.read(read_limit)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise self._unreachable(exc, what) from exc
        if not raw.isclosed():
            self.close()  # a body longer than read_limit was left unread
        return _Response(raw, data)

    def _unreachable(self, exc: BaseException, what: str) -> RegistryError:
        hint = "check the address, and that the registry is running and reachable from here"
        if isinstance(exc, ssl.SSLError):
            hint = "the registry's certificate is not trusted here; add its CA to the system's trust store"
        return RegistryError(f"cannot reach registry {self.registry} ({self.scheme}) while {what}: {_reason(exc)}",
                             hint=hint)

    def _refusal(self, raw: http.client.HTTPResponse, data: bytes, what: str) -> RegistryError:
        code, message = _error_of(data)
        if raw.status == 401:
            challenge = _clean(raw.getheader("WWW-Authenticate") or "", 120)
            return RegistryError(f"registry {self.registry} asks for a login while {what} ({challenge}); envkit "
                                 "does not log in to registries yet", hint=_LOGIN_HINT)
        if raw.status == 403:
            return RegistryError(f"registry {self.registry} denied {what} (HTTP 403 {code} {message})".rstrip(),
                                 hint=_LOGIN_HINT)
        detail = f"{code} {message}".strip() or _clean(raw.reason or "", 80)
        return RegistryError(f"registry {self.registry} refused {what}: HTTP {raw.status} {detail}")


@dataclass
class _Response:
    raw: http.client.HTTPResponse
    body: bytes

    @property
    def status(self) -> int:
        return self.raw.status

    def getheader(self, name: str) -> str | None:
        return self.raw.getheader(name)


class _Reader:
    """A file as an upload body: exactly ``size`` bytes in big reads, reporting progress."""

    def __init__(self, fh: IO[bytes], size: int, advance: Callable[[int], None] | None) -> None:
        self.fh, self.left, self.advance = fh, size, advance

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(min(self.left, _CHUNK if n is None or n < 0 else n))
        self.left -= len(data)
        if data and self.advance:
            self.advance(len(data))
        return data

    def tell(self) -> int:
        return self.fh.tell()

    def seek(self, pos: int) -> None:
        self.left += self.fh.tell() - pos
        self.fh.seek(pos)


def _error_of(data: bytes) -> tuple[str, str]:
    """The first (code, message) of the registry's ``{"errors": [...]}`` body, shortened and cleaned."""
    try:
        first = json.loads(data)["errors"][0]
        return _clean(str(first.get("code", "")), 40), _clean(str(first.get("message", "")), 160)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", _clean(data.decode("utf-8", "replace"), 160)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return _clean(str(text), 160)


def _clean(text: str, limit: int) -> str:
    """A registry's text made fit for a one-line message: control characters out, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."
