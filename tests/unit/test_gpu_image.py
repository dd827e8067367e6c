"""CUDA images and what runs in them: NVIDIA_REQUIRE_CUDA, the checks before a build (space, a compiler for triton),
no client timeout on image loads, TF32 recorded as it ran (opt-in override), the step trace's batched copies.
"""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from envkit.errors import BuildError
from envkit.image.preflight import check_space, compiler_warning, needed_bytes
from envkit.image.render import compute_build_key, image_env, in_image_files, labels, plan_build, recipe_hash
from envkit.lock.model import load_lockfile
from envkit.settings import IMAGE_DETERMINISM_ENV, LABEL_BASE_COMPILER, LABEL_CUDA

from .fakes import FakeEngine

LOCKS = Path(__file__).resolve().parents[2] / "lockfiles"


def test_cuda_images_require_their_cuda_major_and_say_which():
    cuda = load_lockfile(LOCKS / "cuda.lock.yaml")
    assert image_env(cuda, "native")["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"
    assert labels(cuda, "native", "k")[LABEL_CUDA] == "13.0"
    assert plan_build(cuda).env["NVIDIA_REQUIRE_CUDA"] == "cuda>=13.0"  # written into the config envkit writes
    cpu = load_lockfile(LOCKS / "cpu.lock.yaml")
    assert "NVIDIA_REQUIRE_CUDA" not in image_env(cpu, "native") and LABEL_CUDA not in labels(cpu, "native", "k")


def test_tf32_is_not_overridden_behind_torchs_back():
    assert "NVIDIA_TF32_OVERRIDE" not in IMAGE_DETERMINISM_ENV
    for name in ("cpu", "cuda"):
        assert "NVIDIA_TF32_OVERRIDE" not in image_env(load_lockfile(LOCKS / f"{name}.lock.yaml"), "native")


def test_the_build_key_covers_what_envkit_renders(monkeypatch):
    lock = load_lockfile(LOCKS / "cuda.lock.yaml")
    files = in_image_files()
    before = compute_build_key(lock, "native", recipe_hash(lock, files))
    monkeypatch.setattr("envkit.image.render.image_env", lambda lock, profile: {"NEW": "1"})
    assert compute_build_key(lock, "native", recipe_hash(lock, files)) != before  # a new ENV: a new image


def test_a_triton_lock_on_a_base_without_a_compiler_is_warned_about():
    cuda = load_lockfile(LOCKS / "cuda.lock.yaml")
    engine = FakeEngine()
    bare = engine.add_image("bare")  # its python3 has no Python.h: the fake's probe of it fails
    warning = compiler_warning(engine, cuda, bare)
    assert "holds triton" in warning and "python:3.11-bookworm" in warning
    with_gcc = engine.add_image("with-gcc", labels={LABEL_BASE_COMPILER: "gcc"})
    assert compiler_warning(engine, cuda, with_gcc) is None
    assert compiler_warning(engine, load_lockfile(LOCKS / "cpu.lock.yaml"), bare) is None  # no triton
    debian = replace(cuda, base=load_lockfile(LOCKS / "cpu.lock.yaml").base)  # minbase: no gcc among its .debs
    assert "-dev in the spec" in compiler_warning(engine, debian, bare)


def test_the_reference_cuda_lock_is_on_a_registry_base_with_a_compiler():
    """Triton (torch.compile on the GPU) needs gcc and Python.h: Docker's full python image has them, slim does not."""
    cuda = load_lockfile(LOCKS / "cuda.lock.yaml")
    assert cuda.base.kind == "registry" and cuda.base.ref.startswith("python:3.11-bookworm@sha256:")
    assert "slim" not in cuda.base.ref


class _Facts(FakeEngine):
    root: str = ""

    def facts(self):
        return {**super().facts(), "root_dir": self.root}


def test_a_build_that_cannot_fit_is_refused_before_it_starts(tmp_path, monkeypatch):
    wheel = tmp_path / "big.whl"
    wheel.write_bytes(b"x" * 1000)
    engine = _Facts()
    engine.root = str(tmp_path)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(total=0, used=0, free=needed_bytes([wheel]) - 1))
    with pytest.raises(BuildError, match=r"not enough free space for this build: about 1\.0 GiB needed in .* GiB free"):
        check_space(engine, [wheel])
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(total=0, used=0, free=needed_bytes([wheel])))
    check_space(engine, [wheel])
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2376")  # a remote engine's disk is not ours to see
    monkeypatch.setattr("shutil.disk_usage", lambda p: SimpleNamespace(total=0, used=0, free=0))
    check_space(engine, [wheel])


def test_loads_have_no_client_timeout(monkeypatch):
    """A CUDA image is several GB: its load must not end at the client's read timeout."""
    from envkit.engine.docker import DockerEngine
    from envkit.engine.dockerapi import DockerApi, endpoint_from_env

    seen = {}

    class Answer:
        def __iter__(self):
            return iter([b'{"stream":"Loaded image ID: sha256:' + b"0" * 64 + b'\\n"}\r\n'])

        def close(self):
            pass

    def open_(self, method, target, *, body=None, headers=None, timeout=None, chunked=False):
        seen.update(target=target, timeout=timeout, chunked=chunked, body=list(body))
        return Answer()

    api = DockerApi(endpoint_from_env({}), "1.41", timeout=600)
    monkeypatch.setattr(DockerApi, "open", open_)
    engine = DockerEngine(api)
    monkeypatch.setattr(engine, "image", lambda ref: SimpleNamespace(id=ref))
    assert engine.load(iter([b"archive"])) == ["sha256:" + "0" * 64]
    assert seen["timeout"] is None and seen["target"].startswith("/v1.41/images/load")
    assert seen["chunked"] and seen["body"] == [b"archive"] and api.timeout == 600


# --- in the job -----------------------------------------------------------------------------------------------------
@pytest.fixture()
def torch_state(monkeypatch):
    torch = pytest.importorskip("torch")
    from envkit.injob import state

    monkeypatch.setattr(torch, "_envkit_patched", True, raising=False)
    monkeypatch.setattr(state.S, "report", state.new_report("main", None))
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE", raising=False)
    saved = torch.backends.cuda.matmul.fp32_precision if hasattr(torch.backends.cuda.matmul, "fp32_precision") \
        else None
    yield torch, state
    if saved is not None:
        torch.backends.cuda.matmul.fp32_precision = saved


@pytest.mark.slow  # imports torch in this process
def test_the_report_records_tf32_as_it_ran(torch_state, monkeypatch):
    torch, state = torch_state
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision")
    state.sync_report()
    r = state.S.report
    assert r["fp32_precision"]["cuda.matmul"] in ("none", "ieee") and r["tf32_matmul"] is False
    assert r["tf32_cudnn"] is True and r["nvidia_tf32_override"] is None
    torch.backends.cuda.matmul.fp32_precision = "tf32"  # the new API: torch then raises on the legacy flags
    state.sync_report()
    assert r["tf32_matmul"] is True and r["cuda_matmul_allow_tf32"] is None and r["torch_version"] == torch.__version__
    assert r["warnings"] == []  # the legacy flags' refusal is expected, not a warning
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")  # the opt-in override wins over torch
    state.sync_report()
    assert (r["tf32_matmul"], r["tf32_cudnn"], r["nvidia_tf32_override"]) == (False, False, "0")


@pytest.mark.slow  # imports torch in this process
def test_batched_trace_digests_equal_one_by_one_digests():
    torch = pytest.importorskip("torch")
    from envkit.injob import trace

    tensors = [torch.randn(3, 4), torch.arange(10), torch.randn(5).to(torch.bfloat16), torch.tensor(3.0),
               torch.zeros(0), torch.randn(4, 4).t(), torch.ones(3, dtype=torch.bool), torch.randn(1000, 300)]
    assert trace.digest_many(tensors, stage=True) == [trace.digest(t) for t in tensors]
    big = torch.randn(trace.STAGE_BYTES // 4 + 1)  # larger than the staging buffer: copied alone
    assert trace.digest_many([big, tensors[0]], stage=True) == [trace.digest(big), trace.digest(tensors[0])]
    # still CRC-32 of the bytes: traces written before compare with traces written now
    assert trace.digest(tensors[0]) == f"{zlib.crc32(tensors[0].numpy().tobytes()):08x}"
