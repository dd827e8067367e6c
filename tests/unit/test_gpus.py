"""The GPUs of a job, on recorded GPU hosts (tests/unit/gpu_hosts): what a request gives, what the record says,
which differences refuse a replay, and the checks before a job starts. No GPU needed.
"""

from __future__ import annotations

import pytest

from envkit.engine import GpuRequest
from envkit.errors import GpuError
from envkit.fingerprint import compare_fingerprints
from envkit.lock.cuda import driver_supports, lock_cuda, packages_cuda
from envkit.lock.model import PinnedPackage
from envkit.run.gpus import check, gpu_request, job_section, parse_gpus

from .gpu_hosts import gpu_host


@pytest.mark.parametrize(("given", "canonical", "request_"), [
    ("all", "all", GpuRequest(count=-1)),
    ("none", "none", None),
    ("2", "2", GpuRequest(count=2)),
    ("02", "2", GpuRequest(count=2)),
    ("device=0,2", "device=0,2", GpuRequest(device_ids=("0", "2"))),
    ("device=1,1", "device=1", GpuRequest(device_ids=("1",))),
    ("device=GPU-3f1a7c2e-91d4-4b1f-8e0a-5c6d7e8f9a00", "device=GPU-3f1a7c2e-91d4-4b1f-8e0a-5c6d7e8f9a00",
     GpuRequest(device_ids=("GPU-3f1a7c2e-91d4-4b1f-8e0a-5c6d7e8f9a00",))),
    ("device=0:1", "device=0:1", GpuRequest(device_ids=("0:1",))),
])
def test_requests_in_dockers_forms(given, canonical, request_):
    assert parse_gpus(given) == canonical
    assert gpu_request(canonical) == request_


@pytest.mark.parametrize("bad", ["0", "-1", "two", "device=", "device=0,,1", "device=a b", "device=0;rm", "1.5"])
def test_other_requests_are_refused_with_the_forms(bad):
    with pytest.raises(ValueError, match="all, none, a positive count or device="):
        parse_gpus(bad)


def test_a_count_records_devices_0_to_n_minus_1_as_docker_maps_it():
    section = job_section(gpu_host("h100x8"), "2")
    assert [d["index"] for d in section["devices"]] == [0, 1]
    assert (section["count"], section["host_count"], section["requested"]) == (2, 8, "2")
    assert section["driver_version"] == "580.65.06" and section["available"] is True


def test_device_ids_record_those_devices():
    host = gpu_host("h100x8")
    section = job_section(host, f"device=2,{host['devices'][5]['uuid']}")
    assert [d["index"] for d in section["devices"]] == [2, 5]


def test_all_records_every_device():
    assert job_section(gpu_host("h100x8"), "all")["count"] == 8


def test_a_mig_slice_is_recorded_with_its_parents_name_and_its_own_sm_count():
    host = gpu_host("mig")
    slice_uuid = host["devices"][0]["mig_devices"][1]["uuid"]
    (dev,) = job_section(host, f"device={slice_uuid}")["devices"]
    assert dev["name"] == "NVIDIA H100 80GB HBM3"  # what CUDA reports for a slice: the parent's name
    assert (dev["sm_count"], dev["mig_profile"], dev["mig_mode"]) == (16, "1g.10gb", "enabled")
    assert job_section(host, "device=0:1")["devices"] == [dev]


def test_a_none_run_records_no_gpu_whatever_the_host():
    sections = [job_section(gpu_host(name), "none") for name in ("h100x8", "mig", "cpu")]
    assert sections[0] == sections[1] == sections[2]
    assert sections[0]["available"] is False and "--gpus none" in sections[0]["reason"]


def numerics(a: dict, b: dict) -> list[str]:
    return [d.path for d in compare_fingerprints({"gpus": a}, {"gpus": b}) if d.changes_numerics]


def test_a_one_gpu_run_from_an_8_gpu_host_compares_equal_on_a_1_gpu_host_with_another_driver():
    recorded = job_section(gpu_host("h100x8"), "1")
    here = job_section(gpu_host("h100x1"), "1")
    assert here["driver_version"] != recorded["driver_version"]
    assert numerics(recorded, here) == []  # the driver alone does not refuse a replay
    paths = {d.path for d in compare_fingerprints({"gpus": recorded}, {"gpus": here})}
    assert {"gpus.driver_version", "gpus.host_count", "gpus.devices[0].uuid"} <= paths  # shown, not refused


def test_all_on_8_against_all_on_1_changes_numerics():
    assert "gpus.count" in numerics(job_section(gpu_host("h100x8"), "all"), job_section(gpu_host("h100x1"), "all"))


def test_a_mig_slice_against_a_whole_gpu_changes_numerics():
    whole = job_section(gpu_host("h100x1"), "1")
    sliced = job_section(gpu_host("mig"), "device=0:1")
    assert {"gpus.devices[0].sm_count", "gpus.devices[0].mig_mode"} <= set(numerics(whole, sliced))
    assert "gpus.devices[0].name" not in numerics(whole, sliced)  # same name: only the SM count tells them apart


def test_cpu_and_gpu_none_runs_compare_equal():
    assert compare_fingerprints({"gpus": job_section(gpu_host("h100x8"), "none")},
                                {"gpus": job_section(gpu_host("cpu"), "none")}) == []


# --- the check before a job starts -------------------------------------------------------------------------------
def test_no_gpu_on_this_host_is_one_line():
    with pytest.raises(GpuError) as err:
        check("1", gpu_host("cpu"), None)
    assert "--gpus 1, and this host has no usable NVIDIA GPU" in err.value.message
    assert "--gpus none" in err.value.hint and err.value.exit_code == 37


def test_more_gpus_than_the_host_has_is_refused_against_nvml():
    with pytest.raises(GpuError, match="--gpus 4, and this host has 1 GPU$"):
        check("4", gpu_host("h100x1"), "13.0")
    with pytest.raises(GpuError, match="the run used --gpus 8, and this host has 1 GPU") as err:
        check("8", gpu_host("h100x1"), None, replay=True)
    assert "--gpus 1" in err.value.hint


def test_a_device_this_host_lacks_is_named():
    with pytest.raises(GpuError, match="no GPU 3 "):
        check("device=0,3", gpu_host("h100x1"), None)
    with pytest.raises(GpuError, match="no GPU MIG-"):
        check("device=MIG-00000000-0000-0000-0000-000000000000", gpu_host("mig"), None)


def test_a_driver_older_than_the_images_cuda_major_is_refused_in_one_line():
    with pytest.raises(GpuError) as err:
        check("1", gpu_host("driver550"), "13.0")
    message = err.value.message
    assert message == ("the NVIDIA driver 550.54.15 supports CUDA up to 12.4; the image's CUDA 13.0 wheels need CUDA "
                       "13.x (driver 580 or newer)")
    assert "\n" not in message and "580.65.06" in err.value.hint


def test_the_driver_rule_is_the_cuda_major():
    assert driver_supports("12.4", "12.8") is True  # minor-version compatibility within a major
    assert driver_supports("13.0", "12.4") is True
    assert driver_supports("12.4", "13.0") is False
    assert driver_supports(None, "13.0") is None and driver_supports("12.4", None) is None
    check("1", gpu_host("driver550"), "12.8")  # a CUDA 12 image runs on driver 550
    check("1", gpu_host("h100x1"), None)  # not a CUDA image: only the count is checked
    check("none", gpu_host("cpu"), "13.0")  # a CPU job is never refused for GPUs


def pin(name: str, version: str) -> PinnedPackage:
    return PinnedPackage(name=name, version=version, filename=f"{name}-{version}-py3-none-any.whl",
                         url="https://example.invalid/x.whl", sha256="0" * 64)


@pytest.mark.parametrize(("pins", "cuda"), [
    ([pin("torch", "2.13.0"), pin("nvidia-cuda-runtime", "13.0.96")], "13.0"),
    ([pin("nvidia-cuda-runtime-cu12", "12.4.127")], "12.4"),
    ([pin("nvidia-cudnn-cu13", "9.20.0.48")], "13.0"),
    ([pin("torch", "2.5.1+cu124")], "12.4"),
    ([pin("torch", "2.13.0+cpu"), pin("numpy", "2.4.6")], None),
])
def test_the_cuda_of_a_lock_comes_from_its_pins(pins, cuda):
    assert packages_cuda(pins) == cuda


def test_the_reference_locks():
    from pathlib import Path

    from envkit.lock.model import load_lockfile

    locks = Path(__file__).resolve().parents[2] / "lockfiles"
    assert lock_cuda(load_lockfile(locks / "cuda.lock.yaml")) == "13.0"
    assert lock_cuda(load_lockfile(locks / "cpu.lock.yaml")) is None
