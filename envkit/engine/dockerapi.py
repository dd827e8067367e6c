"""The Docker Engine API over the standard library: JSON requests, streamed bodies and the attach stream.

Why not the Docker SDK for this: every ``envkit run`` talks to the engine, and importing the SDK (with requests,
urllib3, charset_normalizer, idna, certifi) costs about 0.13 s per process, a third of what ``docker run`` itself
takes for a trivial job. What a run needs is a handful of JSON calls and one hijacked stream, which
:mod:`http.client` and a socket do. Registry pulls and pushes stay with the SDK (:mod:`envkit.engine.docker`): they
read the user's credentials (``~/.docker/config.json``, credential helpers) and are long enough that its import does
not count.

Where the engine is: ``DOCKER_HOST`` as the Docker CLI reads it, ``unix://PATH`` (the default
``/var/run/docker.sock``) or ``tcp://HOST:PORT``; with ``DOCKER_TLS_VERIFY`` or ``DOCKER_CERT_PATH`` set, TCP is TLS
with the client certificate in ``DOCKER_CERT_PATH`` (default ``~/.docker``: ``cert.pem``, ``key.pem``, and
``ca.pem`` to verify the engine). Each request opens its own connection: on a Unix socket that costs microseconds,
and it makes a :class:`DockerApi` safe to share between threads (a job's stop comes from a signal handler's thread
while the main thread reads its output).

Errors: :class:`ApiError` carries the engine's status and its ``message``; an ``OSError`` or
:class:`http.client.HTTPException` means the engine could not be reached or went away. :mod:`envkit.engine.docker`
turns both into envkit's errors.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

DEFAULT_HOST = "unix:///var/run/docker.sock"
_CHUNK = 1 << 20
_ERROR_BODY_BYTES = 64 * 1024
CLIENT_TIMEOUT = object()  # a request's timeout: the client's own (``DockerApi.timeout``)
_FRAME = struct.Struct(">BxxxL")  # the attach stream's frame header: stream (0 stdin, 1 stdout, 2 stderr), size


class ApiError(Exception):
    """The engine answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    """Where the engine listens: a Unix socket path, or a TCP host and port (TLS settings when ``tls``)."""

    url: str
    socket_path: str | None = None
    host: str | None = None
    port: int | None = None
    tls: bool = False
    cert_dir: Path | None = None
    verify: bool = False


def endpoint_from_env(environ: dict[str, str] | None = None) -> Endpoint:
    """The engine ``DOCKER_HOST`` names, with ``DOCKER_TLS_VERIFY`` and ``DOCKER_CERT_PATH`` as the Docker CLI reads
    them.

    Raises:
        ValueError: a scheme envkit does not speak (``ssh://``, ``npipe://``), or a malformed address.
    """
    env = os.environ if environ is None else environ
    url = env.get("DOCKER_HOST") or DEFAULT_HOST
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    cert_dir = env.get("DOCKER_CERT_PATH") or None
    parts = urlsplit(url)
    if parts.scheme in ("unix", "http+unix"):
        path = parts.path or parts.netloc
        if not path:
            raise ValueError(f"DOCKER_HOST={url!r} names no socket")
        return Endpoint(url, socket_path=path)
    if parts.scheme in ("tcp", "http", "https"):
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"DOCKER_HOST={url!r} has a bad port") from exc
        if not parts.hostname:
            raise ValueError(f"DOCKER_HOST={url!r} names no host")
        tls = parts.scheme == "https" or verify or cert_dir is not None
        return Endpoint(url, host=parts.hostname, port=port or (2376 if tls else 2375), tls=tls,
                        cert_dir=Path(cert_dir).expanduser() if cert_dir else Path("~/.docker").expanduser(),
                        verify=verify)
    raise ValueError(f"DOCKER_HOST={url!r}: envkit speaks to engines on unix:// sockets and tcp:// addresses only "
                     "(for ssh://, forward the remote socket: ssh -NL /tmp/docker.sock:/var/run/docker.sock HOST, "
                     "then DOCKER_HOST=unix:///tmp/docker.sock)")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=_CHUNK)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerApi:
    """A client of one engine's HTTP API at a fixed API version (``/v1.41/...``)."""

    def __init__(self, endpoint: Endpoint, version: str, timeout: float | None = 600) -> None:
        self.endpoint = endpoint
        self.version = version
        self.timeout = timeout

    # --- connections -----------------------------------------------------------------------------------------------
    def _ssl_context(self) -> Any:
        import ssl

        ep = self.endpoint
        assert ep.cert_dir is not None
        if ep.verify and not (ep.cert_dir / "ca.pem").is_file():
            raise FileNotFoundError(f"DOCKER_TLS_VERIFY is set and {ep.cert_dir / 'ca.pem'} does not exist (set "
                                    "DOCKER_CERT_PATH to the folder of ca.pem, cert.pem and key.pem)")
        context = ssl.create_default_context(cafile=str(ep.cert_dir / "ca.pem")) if ep.verify \
            else ssl._create_unverified_context()  # the Docker CLI's own rule without DOCKER_TLS_VERIFY
        cert, key = ep.cert_dir / "cert.pem", ep.cert_dir / "key.pem"
        if cert.is_file() and key.is_file():
            context.load_cert_chain(str(cert), str(key))
        return context

    def connection(self, timeout: float | None) -> http.client.HTTPConnection:
        """A new, unconnected connection to the engine."""
        ep = self.endpoint
        if ep.socket_path is not None:
            return _UnixConnection(ep.socket_path, timeout)
        if ep.tls:
            return http.client.HTTPSConnection(ep.host or "", ep.port, timeout=timeout, blocksize=_CHUNK,
                                               context=self._ssl_context())
        return http.client.HTTPConnection(ep.host or "", ep.port, timeout=timeout, blocksize=_CHUNK)

    def url(self, path: str, *args: str, params: dict[str, Any] | None = None, versioned: bool = True) -> str:
        """``/v1.41`` + ``path`` with each ``{}`` filled by a quoted argument, and the query."""
        target = path.format(*(quote(a, safe="/:") for a in args))
        if versioned:
            target = f"/v{self.version}{target}"
        query = {k: _param(v) for k, v in (params or {}).items() if v is not None}
        return f"{target}?{urlencode(query)}" if query else target

    # --- requests --------------------------------------------------------------------------------------------------
    def open(self, method: str, target: str, *, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float | None | object = CLIENT_TIMEOUT, chunked: bool = False) -> http.client.HTTPResponse:
        """Send a request and return the response with its body unread; an error status raises :class:`ApiError`.

        Raises:
            ApiError: the engine answered 4xx or 5xx.
            OSError, http.client.HTTPException: the engine could not be reached or went away.
        """
        conn = self.connection(self.timeout if timeout is CLIENT_TIMEOUT else timeout)  # type: ignore[arg-type]
        try:
            conn.request(method, target, body=body, headers={"User-Agent": "envkit", **(headers or {})},
                         encode_chunked=chunked)
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if response.status >= 400:
            try:
                data = response.read(_ERROR_BODY_BYTES)
            finally:
                conn.close()
            raise ApiError(response.status, _error_message(data, response.status))
        return response

    def call(self, method: str, path: str, *args: str, params: dict[str, Any] | None = None, body: Any = None,
             timeout: float | None | object = CLIENT_TIMEOUT, versioned: bool = True) -> Any:
        """One request with a JSON body (a dict) or none; the decoded JSON answer (None for an empty one, the text
        for a non-JSON one)."""
        data, headers = None, {}
        if body is not None:
            data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        response = self.open(method, self.url(path, *args, params=params, versioned=versioned), body=data,
                             headers=headers, timeout=timeout)
        try:
            raw = response.read()
        finally:
            response.close()
        if not raw:
            return None
        if (response.getheader("Content-Type") or "").startswith("application/json"):
            return json.loads(raw)
        return raw.decode(errors="replace")

    def stream_json(self, response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
        """The JSON objects of a streamed answer (``/images/load``'s progress), one per line."""
        try:
            for line in response:
                line = line.strip()
                if line:
                    item = json.loads(line)
                    if isinstance(item, dict):
                        yield item
        finally:
            response.close()

    def stream_bytes(self, response: http.client.HTTPResponse) -> Iterator[bytes]:
        """A streamed body in chunks of at most 1 MiB."""
        try:
            while chunk := response.read(_CHUNK):
                yield chunk
        finally:
            response.close()

    def attach(self, container_id: str) -> AttachStream:
        """Attach to a created container's stdout and stderr (with what it already wrote), before it starts.

        The engine answers ``101 UPGRADED`` and the connection becomes the container's output, multiplexed in frames
        of an 8-byte header and a payload (no TTY: envkit's containers never have one). The connection is opened
        here; iterating the returned stream yields ``(stdout, stderr)`` chunks and ends when the container's streams
        close; :meth:`AttachStream.close` closes it early.

        Raises:
            ApiError: the engine refused (no such container).
            OSError: the engine could not be reached.
        """
        target = self.url("/containers/{}/attach", container_id,
                          params={"logs": 1, "stream": 1, "stdout": 1, "stderr": 1})
        conn = self.connection(self.timeout)
        conn.connect()
        sock = conn.sock
        try:
            host = "localhost" if self.endpoint.socket_path else f"{self.endpoint.host}:{self.endpoint.port}"
            sock.sendall(f"POST {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: envkit\r\nContent-Length: 0\r\n"
                         "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n".encode())
            head, rest = _read_head(sock)
            status = _status_of(head)
            if status >= 400:
                raise ApiError(status, _error_message(rest, status))
            if status not in (101, 200):
                raise http.client.HTTPException(f"the engine answered the attach with status {status}")
            sock.settimeout(None)  # the job may print nothing for hours
        except BaseException:
            conn.close()
            raise
        return AttachStream(conn, rest)


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):  # filters: {"label": ["k=v"]}
        return json.dumps({k: v if isinstance(v, list) else [v] for k, v in value.items()})
    return str(value)


def _error_message(data: bytes, status: int) -> str:
    try:
        message = json.loads(data).get("message")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else data.decode(errors="replace")
    return text.strip() or f"HTTP status {status}"


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head (status line and headers) of a hijacked connection, and the bytes read past it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise http.client.RemoteDisconnected("the engine closed the attach connection")
        data += chunk
        if len(data) > 64 * 1024:
            raise http.client.HTTPException("the engine's attach answer has no end of headers")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _status_of(head: bytes) -> int:
    try:
        return int(head.split(b"\r\n", 1)[0].split()[1])
    except (IndexError, ValueError) as exc:
        raise http.client.HTTPException(f"a bad status line from the engine: {head[:80]!r}") from exc


class AttachStream:
    """A container's output on a hijacked connection: ``(stdout, stderr)`` chunks, one of them None."""

    def __init__(self, conn: http.client.HTTPConnection, pending: bytes) -> None:
        self._conn = conn
        self._pending = pending

    def __iter__(self) -> Iterator[tuple[bytes | None, bytes | None]]:
        sock = self._conn.sock
        if sock is None:
            return
        buffer = bytearray(self._pending)
        try:
            while True:
                while len(buffer) < _FRAME.size:
                    chunk = sock.recv(_CHUNK)
                    if not chunk:
                        return
                    buffer += chunk
                stream, size = _FRAME.unpack_from(buffer)
                while len(buffer) < _FRAME.size + size:
                    chunk = sock.recv(_CHUNK)
                    if not chunk:
                        return
                    buffer += chunk
                payload = bytes(buffer[_FRAME.size:_FRAME.size + size])
                del buffer[:_FRAME.size + size]
                if payload:
                    yield (None, payload) if stream == 2 else (payload, None)
        finally:
            self.close()

    def close(self) -> None:
        self._conn.close()


def body_of(tar: Path | Iterable[bytes]) -> tuple[IO[bytes] | Iterable[bytes], dict[str, str], bool]:
    """A request body for an upload: a file with its length, or chunks sent chunked."""
    if isinstance(tar, (str, Path)):
        fh = open(tar, "rb")  # noqa: SIM115 - closed by the caller once the engine has answered
        return fh, {"Content-Length": str(os.fstat(fh.fileno()).st_size)}, False
    return tar, {}, True
