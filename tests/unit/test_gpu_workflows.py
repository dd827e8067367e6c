"""GPU runs and replays against the in-memory engine on recorded GPU hosts: the request recorded and replayed, the job's
GPUs in the fingerprint, the checks before a container, start failures, the probe with the job's devices, the
doctor's GPU checks. What a user relies on: a GPU run replays on the GPUs it used, and a host that cannot give them
says so in one line before anything runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from envkit.cli import main
from envkit.errors import GpuError, JobError, PlatformMismatchError
from envkit.replay import replay
from envkit.run.executor import Sink
from envkit.run.runner import RunRequest, run
from envkit.settings import LABEL_CUDA
from envkit.store.filestore import FileStore

from .fakes import FakeEngine, JobContext, Outcome
from .gpu_hosts import use_host

QUIET = Sink(None, None)


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    p = tmp_path / "project"
    p.mkdir()
    (p / "train.py").write_text("import torch\nassert torch.cuda.is_available()\n")
    return p


@pytest.fixture()
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def cuda_job(ctx: JobContext) -> Outcome:
    """Writes a digest that depends on the seed and on how many GPUs it was given, like a data-parallel training."""
    request = ctx.spec.gpus
    given = "cpu" if request is None else (",".join(request.device_ids) or str(request.count))
    ctx.path("/work/weights.bin").write_bytes(hashlib.sha256(f"{ctx.env['ENVKIT_SEED']}/{given}".encode()).digest())
    return Outcome(0)


def cuda_image(engine: FakeEngine) -> str:
    return engine.add_image("cuda-img", cuda_job, labels={LABEL_CUDA: "13.0"})


def start(engine, store, project, image, gpus="1", **kw):
    return run(engine, store, RunRequest(script="train.py", seed=3, image=image, project=project, trace="off",
                                         gpus=gpus, **kw), sink=QUIET)


def creates(engine: FakeEngine) -> list:
    return [spec for call, spec in engine.calls if call == "create"]


# --- run -----------------------------------------------------------------------------------------------------------
def test_a_gpu_run_records_its_request_its_devices_and_nccls_settings(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    record = start(engine, store, project, cuda_image(engine), gpus="2")
    assert record.status == "succeeded" and record.gpus == "2"
    (spec,) = creates(engine)
    assert spec.gpus.count == 2 and "NVIDIA_VISIBLE_DEVICES" not in spec.env  # Docker sets it from the request
    assert spec.ulimits == {"memlock": (-1, -1), "stack": (64 * 2**20, 64 * 2**20)}
    assert record.ulimits == {"memlock": [-1, -1], "stack": [64 * 2**20, 64 * 2**20]}
    gpus = store.read(record.run_id).fingerprint.gpus
    assert (gpus["count"], gpus["host_count"], [d["index"] for d in gpus["devices"]]) == (2, 8, [0, 1])


def test_an_engine_that_may_not_raise_ulimits_runs_the_job_with_its_own_and_says_so(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8, ulimits_refused=True)
    record = start(engine, store, project, cuda_image(engine))
    assert record.status == "succeeded" and record.ulimits == {}
    assert any("the engine refused the ulimits memlock, stack" in n for n in record.notes)
    first, second = creates(engine)
    assert first.ulimits and second.ulimits == {}


def test_the_probe_runs_with_the_jobs_gpus_and_is_cached_per_request(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    image = cuda_image(engine)
    start(engine, store, project, image, gpus="1")
    start(engine, store, project, image, gpus="1")
    start(engine, store, project, image, gpus="none")
    probes = [s for s in engine.helpers if s.command[-1].endswith("probe.py")]
    assert [p.gpus.count if p.gpus else None for p in probes] == [1, None]  # cached for the second --gpus 1 run
    assert probes[1].env["NVIDIA_VISIBLE_DEVICES"] == "void"


def test_gpus_1_on_a_host_without_gpus_fails_before_any_container_with_a_failed_record(project, store, monkeypatch):
    use_host(monkeypatch, "cpu")
    engine = FakeEngine()
    with pytest.raises(GpuError, match="no usable NVIDIA GPU"):
        start(engine, store, project, cuda_image(engine))
    assert creates(engine) == [] and engine.helpers == []  # refused against NVML: no container, no probe
    (summary,) = store.list().runs
    record = store.read(summary.run_id)
    assert record.status == "failed" and record.gpus == "1"
    assert "could not run: --gpus 1, and this host has no usable NVIDIA GPU" in record.notes[-1]


def test_gpus_1_with_a_lock_is_refused_before_the_image_is_built(project, store, monkeypatch, tmp_path):
    from envkit.lock.model import write_lockfile

    from .test_workflows import tiny_lock

    use_host(monkeypatch, "cpu")
    engine = FakeEngine()
    lock = tiny_lock(tmp_path, engine.add_image("base"))
    lock = type(lock)(**{**lock.__dict__, "packages": (*lock.packages, *cuda_pins())}).sealed()
    write_lockfile(lock, tmp_path / "cuda.lock.yaml")
    with pytest.raises(GpuError):
        run(engine, store, RunRequest(script="train.py", seed=1, lock=tmp_path / "cuda.lock.yaml", project=project,
                                      gpus="1", trace="off"), sink=QUIET)
    assert not [c for c, _ in engine.calls if c == "build"]
    assert store.read(store.list().runs[0].run_id).status == "failed"


def cuda_pins():
    from envkit.lock.model import PinnedPackage

    return [PinnedPackage(name="nvidia-cuda-runtime", version="13.0.96",
                          filename="nvidia_cuda_runtime-13.0.96-py3-none-manylinux_2_17_x86_64.whl",
                          url="https://files.pythonhosted.org/packages/x/nvidia_cuda_runtime-13.0.96-py3-none-"
                              "manylinux_2_17_x86_64.whl", sha256="1" * 64)]


def test_a_driver_too_old_for_the_images_cuda_fails_in_one_line(project, store, monkeypatch):
    use_host(monkeypatch, "driver550")
    engine = FakeEngine(gpus=8)
    with pytest.raises(GpuError, match="^the NVIDIA driver 550.54.15 supports CUDA up to 12.4; the image's CUDA 13.0"):
        start(engine, store, project, cuda_image(engine))
    assert creates(engine) == []


def test_more_gpus_than_nvml_sees_is_refused_before_the_engine(project, store, monkeypatch):
    use_host(monkeypatch, "h100x1")
    engine = FakeEngine(gpus=1)
    with pytest.raises(GpuError, match="--gpus 4, and this host has 1 GPU"):
        start(engine, store, project, cuda_image(engine), gpus="4")
    assert creates(engine) == []


@pytest.mark.parametrize(("toolkit_gpus", "message"), [
    (None, "could not select device driver"),  # NVML sees GPUs, but the engine has no NVIDIA hook
    (2, "unknown device"),  # the hook gives fewer devices than NVML lists (a misconfigured toolkit)
])
def test_gpu_failures_at_container_start_end_the_record_failed(project, store, monkeypatch, toolkit_gpus, message):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=toolkit_gpus)
    with pytest.raises(JobError, match=message):
        start(engine, store, project, cuda_image(engine), gpus="4")
    record = store.read(store.list().runs[0].run_id)
    assert record.status == "failed" and message in record.notes[-1]


def test_gpu_start_errors_get_the_toolkits_hint():
    from envkit.engine.base import ContainerSpec, GpuRequest
    from envkit.engine.docker import _start_hint

    spec = ContainerSpec(image="i", command=["python"], gpus=GpuRequest(count=4))
    cases = {
        'could not select device driver "" with capabilities: [[gpu]]': "NVIDIA container toolkit",
        "OCI runtime create failed: nvidia-container-cli: device error: 3: unknown device: unknown": "fewer GPUs",
        "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=13.0, please update your driver to a "
        "newer version, or use an earlier cuda container: unknown": "older than the image's CUDA",
        "nvidia-container-cli: initialization error: nvml error: driver not loaded: unknown": "kernel module",
        "nvidia-container-cli: initialization error: load library failed: libnvidia-ml.so.1: cannot open shared "
        "object file: no such file or directory: unknown": "driver's libraries",
    }
    for reason, hint in cases.items():
        assert hint in _start_hint(spec, reason), reason


# --- none ----------------------------------------------------------------------------------------------------------
def test_a_none_run_hides_the_gpus_of_a_default_nvidia_runtime(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    record = start(engine, store, project, cuda_image(engine), gpus="none")
    (spec,) = creates(engine)
    assert spec.gpus is None and spec.env["NVIDIA_VISIBLE_DEVICES"] == "void" and spec.ulimits == {}
    assert record.fingerprint.gpus == {"requested": "none", "available": False,
                                       "reason": "the job was given no GPU (--gpus none)"}


@pytest.mark.parametrize(("made_on", "replayed_on"), [("h100x8", "cpu"), ("cpu", "h100x8"), ("mig", "driver550")])
def test_a_none_run_is_not_refused_by_a_host_whose_gpus_differ(project, store, monkeypatch, made_on, replayed_on):
    use_host(monkeypatch, made_on)
    engine = FakeEngine(gpus=8 if made_on != "cpu" else None)
    original = start(engine, store, project, cuda_image(engine), gpus="none")
    use_host(monkeypatch, replayed_on)
    engine.gpus = 8 if replayed_on != "cpu" else None
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert result.verdict.kind == "IDENTICAL" and not result.forced


# --- replay --------------------------------------------------------------------------------------------------------
def test_a_gpu_run_replays_with_its_gpus_on_another_gpu_host(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    original = start(engine, store, project, cuda_image(engine), gpus="1", shm_size="8g", ipc="shareable")
    use_host(monkeypatch, "h100x1")  # another host, another driver release: same model, same SMs
    engine.gpus = 1
    result = replay(engine, store, original.run_id, sink=QUIET)
    assert result.verdict.kind == "IDENTICAL" and not result.forced
    spec = creates(engine)[-1]
    assert spec.gpus.count == 1 and (spec.shm_size, spec.ipc) == ("8g", "shareable")
    assert spec.ulimits["memlock"] == (-1, -1) and spec.network == "none"
    assert result.record.gpus == "1" and result.record.fingerprint.gpus["driver_version"] == "580.82.07"


def test_a_replay_on_fewer_gpus_is_refused_up_front(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    original = start(engine, store, project, cuda_image(engine), gpus="all")
    use_host(monkeypatch, "h100x1")
    engine.gpus = 1
    n_calls = len(engine.calls)
    with pytest.raises(GpuError, match=r"the run used 8 GPUs \(--gpus all\), and this host has 1 GPU"):
        replay(engine, store, original.run_id, sink=QUIET)
    assert [c for c, _ in engine.calls[n_calls:] if c in ("create", "pull", "run_output")] == []
    assert len(store.list().runs) == 1  # nothing ran, nothing recorded


def test_a_replay_on_an_old_driver_is_refused_with_the_driver_line(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    original = start(engine, store, project, cuda_image(engine), gpus="1")
    use_host(monkeypatch, "driver550")
    with pytest.raises(GpuError, match="driver 550.54.15 supports CUDA up to 12.4"):
        replay(engine, store, original.run_id, sink=QUIET)


def test_replay_gpus_overrides_the_request_and_a_cpu_replay_of_a_gpu_run_is_a_mismatch(project, store, monkeypatch):
    use_host(monkeypatch, "h100x8")
    engine = FakeEngine(gpus=8)
    original = start(engine, store, project, cuda_image(engine), gpus="2")
    with pytest.raises(PlatformMismatchError) as err:
        replay(engine, store, original.run_id, sink=QUIET, gpus="1")
    assert "gpus.count" in {d.path for d in err.value.differences}
    result = replay(engine, store, original.run_id, sink=QUIET, gpus="none", force=True)
    spec = creates(engine)[-1]
    assert spec.gpus is None and spec.env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert result.verdict.kind == "DIVERGED" and result.record.platform_mismatch
    assert any("replayed with --gpus none; the run used --gpus 2" in n for n in result.notes)


def test_a_mig_slice_run_refuses_a_whole_gpu_replay(project, store, monkeypatch):
    use_host(monkeypatch, "mig")
    engine = FakeEngine(gpus=1)
    original = start(engine, store, project, cuda_image(engine), gpus="device=0")
    use_host(monkeypatch, "h100x1")
    with pytest.raises(PlatformMismatchError) as err:
        replay(engine, store, original.run_id, sink=QUIET)
    assert "gpus.devices[0].mig_mode" in {d.path for d in err.value.differences}


# --- the CLI and the doctor ----------------------------------------------------------------------------------------
def test_cli_run_gpus_1_on_a_host_without_gpus_is_one_line_and_envkits_exit_code(project, monkeypatch, capsys, tmp_path):
    use_host(monkeypatch, "cpu")
    engine = FakeEngine()
    image = cuda_image(engine)
    monkeypatch.setattr("envkit.engine.connect", lambda timeout=600: engine)
    monkeypatch.chdir(project)
    monkeypatch.setenv("ENVKIT_HOME", str(tmp_path / "home"))
    rc = main(["run", "--seed", "1", "--gpus", "1", "--image", image, "train.py"])
    err = capsys.readouterr().err
    assert rc == 125  # `envkit run`'s own failures exit 125, as docker run's do (--json names GpuError's 37)
    assert err.splitlines()[0] == "error: --gpus 1, and this host has no usable NVIDIA GPU (NVML cannot start (NVML " \
                                  "Shared Library Not Found); no NVIDIA driver on this host)"
    assert "Traceback" not in err
    rows = FileStore(tmp_path / "home").list().runs
    assert [r.status for r in rows] == ["failed"]


def test_doctor_runs_a_gpu_container_and_checks_the_driver_against_cuda_locks(monkeypatch):
    from envkit.run import gpucheck

    from .gpu_hosts import gpu_host

    locks = Path(__file__).resolve().parents[2] / "lockfiles"
    engine = FakeEngine(gpus=8)
    engine.add_image("envkit/base:bookworm-py3.11")
    ok = gpucheck.container_check(engine, gpu_host("h100x8"))
    assert ok.ok and ok.detail == "a container with --gpus all sees 8 GPU(s)"
    (spec,) = engine.helpers
    assert spec.command == ["nvidia-smi", "-L"] and spec.gpus.count == -1
    no_toolkit = gpucheck.container_check(FakeEngine(images=dict(engine.images)), gpu_host("h100x8"))
    assert not no_toolkit.ok and "could not select device driver" in no_toolkit.detail
    (old,) = gpucheck.driver_checks(gpu_host("driver550"), [locks / "cuda.lock.yaml", locks / "cpu.lock.yaml"])
    assert not old.ok and "supports CUDA up to 12.4" in old.detail and "580" in old.detail
    (new,) = gpucheck.driver_checks(gpu_host("h100x1"), [locks / "cuda.lock.yaml"])
    assert new.ok
    assert gpucheck.host_line(gpu_host("mig")).startswith("1 x NVIDIA H100 80GB HBM3 (MIG, 2 slices); driver 580")
