"""The engine client on the standard library: where DOCKER_HOST points, what a container is created with, the
engine's refusals as one line, and the attach stream's frames.

The real engine is exercised by every `docker` test; here a small HTTP server on a Unix socket answers as the engine
does, so the byte-level cases (a frame cut across reads, a refusal's JSON, the 101 upgrade) are checked without one.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from pathlib import Path

import pytest

from envkit.engine import ContainerSpec, GpuRequest, Mount
from envkit.engine.docker import DockerEngine, create_body
from envkit.engine.dockerapi import ApiError, DockerApi, endpoint_from_env
from envkit.errors import ImageNotFoundError, JobError


# --- where the engine is ----------------------------------------------------------------------------------------------
def test_the_default_engine_is_the_local_socket():
    ep = endpoint_from_env({})
    assert ep.socket_path == "/var/run/docker.sock" and not ep.tls


def test_docker_host_names_a_socket_or_a_tcp_address(tmp_path):
    assert endpoint_from_env({"DOCKER_HOST": "unix:///run/b/docker.sock"}).socket_path == "/run/b/docker.sock"
    plain = endpoint_from_env({"DOCKER_HOST": "tcp://10.0.0.5:2375"})
    assert (plain.host, plain.port, plain.tls) == ("10.0.0.5", 2375, False)
    tls = endpoint_from_env({"DOCKER_HOST": "tcp://engine.example:2376", "DOCKER_TLS_VERIFY": "1",
                             "DOCKER_CERT_PATH": str(tmp_path)})
    assert (tls.host, tls.port, tls.tls, tls.verify, tls.cert_dir) == ("engine.example", 2376, True, True, tmp_path)
    assert endpoint_from_env({"DOCKER_HOST": "tcp://10.0.0.5"}).port == 2375


@pytest.mark.parametrize("host", ["ssh://me@host", "npipe:////./pipe/docker_engine", "tcp://", "unix://",
                                  "tcp://host:99999"])
def test_an_address_envkit_cannot_speak_to_is_refused_with_the_way_round(host):
    with pytest.raises(ValueError, match="DOCKER_HOST"):
        endpoint_from_env({"DOCKER_HOST": host})


# --- what a container is created with ---------------------------------------------------------------------------------
def test_the_create_body_carries_every_setting_of_the_spec():
    spec = ContainerSpec(image="img", command=["python", "t.py"], env={"A": "1"}, workdir="/work", user="1000:1000",
                         mounts=[Mount(Path("/p/code"), "/work"), Mount(Path("/p/out"), "/out", read_only=False)],
                         labels={"envkit.run": "x"}, gpus=GpuRequest(device_ids=("0", "2")), memory="1.5g",
                         shm_size="64MiB", ipc="private", cap_drop=("ALL",), security_opt=("no-new-privileges",),
                         pids_limit=512, ulimits={"memlock": (-1, -1)}, hostname="envkit-job")
    body = create_body(spec)
    host = body["HostConfig"]
    assert body["Cmd"] == ["python", "t.py"] and body["Env"] == ["A=1"] and body["Tty"] is False
    assert (body["WorkingDir"], body["User"], body["Hostname"]) == ("/work", "1000:1000", "envkit-job")
    assert host["Binds"] == ["/p/code:/work:ro", "/p/out:/out:rw"] and host["NetworkMode"] == "none"
    assert host["Memory"] == host["MemorySwap"] == 3 << 29 and host["ShmSize"] == 64 << 20
    assert host["DeviceRequests"] == [{"Driver": "", "Count": 0, "DeviceIDs": ["0", "2"],
                                       "Capabilities": [["gpu"]], "Options": {}}]
    assert host["Ulimits"] == [{"Name": "memlock", "Soft": -1, "Hard": -1}]
    assert host["ExtraHosts"] == ["envkit-job:127.0.0.1"] and host["PidsLimit"] == 512
    every = create_body(ContainerSpec(image="img", command=["x"], gpus=GpuRequest()))
    assert every["HostConfig"]["DeviceRequests"][0]["Count"] == -1 and "Memory" not in every["HostConfig"]


def test_a_bad_memory_size_is_a_job_error_with_a_hint():
    engine = DockerEngine(DockerApi(endpoint_from_env({}), "1.41"))
    with pytest.raises(JobError, match="lots") as err:
        engine.create(ContainerSpec(image="img", command=["x"], memory="lots"))
    assert "512m" in (err.value.hint or "")


# --- a stand-in engine on a Unix socket --------------------------------------------------------------------------------
class Engine:
    """Answers each request with the next canned response; records what it was sent."""

    def __init__(self, path: Path, answers: list[bytes]) -> None:
        self.path, self.answers, self.requests = path, answers, []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for answer in self.answers:
            conn, _ = self.server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                self.requests.append(data.split(b"\r\n", 1)[0].decode())
                conn.sendall(answer)

    def api(self) -> DockerApi:
        return DockerApi(endpoint_from_env({"DOCKER_HOST": f"unix://{self.path}"}), "1.41", timeout=10)


def http(status: str, body: bytes = b"", content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


@pytest.fixture()
def sock_path(tmp_path):
    return tmp_path / "engine.sock"


def test_a_refusal_is_the_engines_own_message(sock_path):
    refusal = json.dumps({"message": "No such image: nope:latest"}).encode()
    engine = Engine(sock_path, [http("404 Not Found", refusal), http("404 Not Found", refusal)])
    api = engine.api()
    with pytest.raises(ApiError) as err:
        api.call("GET", "/images/{}/json", "nope:latest")
    assert err.value.status == 404 and err.value.message == "No such image: nope:latest"
    with pytest.raises(ImageNotFoundError, match="nope:latest"):
        DockerEngine(api).image("nope:latest")
    assert engine.requests[0] == "GET /v1.41/images/nope:latest/json HTTP/1.1"


def test_the_attach_stream_splits_stdout_and_stderr_across_any_reads(sock_path):
    frames = frame(1, b"hello\n") + frame(2, b"warning\n") + frame(1, b"x" * 100_000) + frame(1, b"")
    upgrade = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\n"
               b"Upgrade: tcp\r\n\r\n")
    engine = Engine(sock_path, [upgrade + frames[:3]])  # cut inside the first frame's header, then closed
    assert list(engine.api().attach("abc123")) == []
    assert engine.requests == ["POST /v1.41/containers/abc123/attach?logs=1&stream=1&stdout=1&stderr=1 HTTP/1.1"]

    other = sock_path.with_name("other.sock")
    whole = Engine(other, [upgrade + frames])
    chunks = list(whole.api().attach("abc123"))
    assert chunks[0] == (b"hello\n", None) and chunks[1] == (None, b"warning\n")
    assert b"".join(o for o, _ in chunks[2:] if o) == b"x" * 100_000


def test_an_attach_the_engine_refuses_raises_its_message(sock_path):
    engine = Engine(sock_path, [http("404 Not Found", b'{"message":"No such container: abc"}')])
    with pytest.raises(ApiError, match="No such container: abc"):
        engine.api().attach("abc")


def test_an_engine_that_is_not_there_is_an_os_error(tmp_path):
    api = DockerApi(endpoint_from_env({"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}), "1.41", timeout=5)
    with pytest.raises(OSError):
        api.call("GET", "/_ping")


def test_tls_without_the_engines_ca_says_which_file_is_missing(tmp_path):
    ep = endpoint_from_env({"DOCKER_HOST": "tcp://127.0.0.1:1", "DOCKER_TLS_VERIFY": "1",
                            "DOCKER_CERT_PATH": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"ca\.pem does not exist .*DOCKER_CERT_PATH"):
        DockerApi(ep, "1.41").connection(5)
