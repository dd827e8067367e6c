"""A job in its container is unprivileged, and every way a run can end leaves a final record (issue 12)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from envkit.errors import EXIT_COMMAND_NOT_FOUND, EXIT_RUN_FAILED

from .conftest import envkit

pytestmark = pytest.mark.docker

PROBE_PRIVILEGES = """
import json, os, stat
status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
try:
    os.mknod("node", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    mknod = "made"
except OSError as exc:
    mknod = type(exc).__name__
json.dump({"uid": os.getuid(), "cap_eff": status["CapEff"].strip(), "no_new_privs": status["NoNewPrivs"].strip(),
           "mknod": mknod}, open("privileges.json", "w"))
"""


def test_the_job_has_no_capabilities_and_cannot_make_devices(tmp_path, tiny_image):
    (tmp_path / "probe.py").write_text(PROBE_PRIVILEGES)
    r = envkit("run", "--seed", "1", "--image", tiny_image, "--json", "probe.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    seen = json.loads((tmp_path / ".envkit" / "runs" / run_id / "work" / "privileges.json").read_text())
    assert seen["cap_eff"] == "0000000000000000" and seen["no_new_privs"] == "1"
    assert seen["mknod"] == "PermissionError"
    assert seen["uid"] == (65532 if os.getuid() == 0 else os.getuid())


def test_host_network_is_refused(tmp_path, tiny_image):
    (tmp_path / "ok.py").write_text("print('ok')\n")
    r = envkit("run", "--seed", "1", "--image", tiny_image, "--network", "host", "ok.py", cwd=tmp_path)
    assert r.returncode == EXIT_RUN_FAILED and "host" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(("args", "words", "code"), [
    (["--memory", "lots"], "memory", EXIT_RUN_FAILED),  # the engine refuses the container
    (["--image", "DEBIAN_BASE"], "executable file not found", EXIT_COMMAND_NOT_FOUND),  # no `python` in a bare base
])
def test_a_container_that_cannot_run_ends_its_record_as_failed(tmp_path, tiny_image, debian_base, args, words, code):
    (tmp_path / "ok.py").write_text("print('ok')\n")
    args = [debian_base if a == "DEBIAN_BASE" else a for a in args]
    image_args = [] if "--image" in args else ["--image", tiny_image]
    r = envkit("run", "--seed", "1", *image_args, *args, "ok.py", cwd=tmp_path)
    assert r.returncode == code, r.stderr  # envkit's JobError, told apart from a job's own exit 34
    assert words in r.stderr.lower() and "Traceback" not in r.stderr
    [folder] = (tmp_path / ".envkit" / "runs").iterdir()
    record = json.loads((folder / "record.json").read_text())
    assert record["status"] == "failed" and any("could not run" in n for n in record["notes"])


def test_a_killed_envkit_leaves_an_abandoned_run_and_doctor_removes_its_container(client, tmp_path, tiny_image):
    (tmp_path / "sleep.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-m", "envkit", "run", "--seed", "1", "--image", tiny_image, "sleep.py"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = tmp_path / ".envkit" / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list(runs.glob("*/stdout.log")) if runs.exists() else []
        if logs and logs[0].read_bytes().startswith(b"started"):
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the job did not start")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    run_id = logs[0].parent.name
    assert logs[0].read_bytes() == b"started\n"  # streamed to the log as it came, not lost in a buffer
    listing = json.loads(envkit("runs", "--json", cwd=tmp_path).stdout)
    assert [(r["run_id"], r["status"]) for r in listing] == [(run_id, "abandoned")]
    assert client.containers.list(all=True, filters={"label": f"io.envkit.run={run_id}"})  # still there
    doctor = envkit("doctor", "--json", cwd=tmp_path, env={"ENVKIT_HOME": str(tmp_path / ".envkit")})
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert "1 marked abandoned" in checks["abandoned runs"]["detail"]
    assert client.containers.list(all=True, filters={"label": f"io.envkit.run={run_id}"}) == []
    assert json.loads((runs / run_id / "record.json").read_text())["status"] == "abandoned"
