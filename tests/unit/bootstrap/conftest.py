"""Run real job scripts under the seeding bootstrap, installed in a venv the way the image installs it.

Once per session a venv with ``--system-site-packages`` (so it sees the host's numpy and torch) gets the in-job
package as ``envkit_injob`` and ``docker/envkit-bootstrap.pth`` in its site-packages, byte-compiled: the very files
the image build copies (``envkit.image.render.in_image_files``). Jobs run with that venv's python and the environment ``envkit run`` sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
JOBS = Path(__file__).with_name("jobs")

# Variables the host may carry that would change what the job sees; the runner sets what it needs.
_SCRUB = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RANK", "LOCAL_RANK",
          "WORLD_SIZE", "CUBLAS_WORKSPACE_CONFIG")


def install_bootstrap(site_packages: Path) -> None:
    """Put the in-job package and its .pth into a site-packages folder exactly as the image build does."""
    from envkit.image.render import in_image_files
    from envkit.settings import IN_IMAGE_PACKAGE

    for name, data in in_image_files().items():
        (site_packages / name).parent.mkdir(parents=True, exist_ok=True)
        (site_packages / name).write_bytes(data)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site_packages / IN_IMAGE_PACKAGE)], check=True)


@dataclass
class Job:
    """A finished job: exit code, output, the JSON it printed last and the bootstrap reports it left."""

    returncode: int
    stdout: str
    stderr: str
    report_dir: Path
    out_dir: Path
    data: dict = field(default_factory=dict)

    @property
    def reports(self) -> list[dict]:
        return [json.loads(p.read_text()) for p in sorted(self.report_dir.glob("bootstrap-*.json"))]

    def roles(self) -> list[str]:
        return sorted(r["role"] for r in self.reports)


class Runner:
    """Starts job scripts with the venv's python; several at once, so three runs cost about one on two cores."""

    def __init__(self, python: Path, tmp: Path) -> None:
        self.python = python
        self.tmp = tmp
        self._count = 0

    def env(self, seed: int | str | None, determinism: str | None = "strict", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_") and k not in _SCRUB}
        if seed is not None:
            env["ENVKIT_SEED"] = str(seed)
            env["PYTHONHASHSEED"] = str(seed)  # what `envkit run` sets for the container
        if determinism is not None:
            env["ENVKIT_DETERMINISM"] = determinism
        env.update(extra)
        return env

    def start(self, argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path, Path]:
        self._count += 1
        work = self.tmp / f"job{self._count}"
        reports, out = work / "reports", work / "out"
        out.mkdir(parents=True)
        env = dict(env, ENVKIT_REPORT_DIR=str(reports)) if "ENVKIT_SEED" in env else env
        proc = subprocess.Popen(argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return proc, reports, out

    def run_many(self, specs: list[tuple[list[str], dict[str, str]]], timeout: float = 240) -> list[Job]:
        started = [self.start(argv, env) for argv, env in specs]
        jobs = []
        for proc, reports, out in started:
            stdout, stderr = proc.communicate(timeout=timeout)
            job = Job(proc.returncode, stdout, stderr, reports, out)
            lines = stdout.strip().splitlines()
            if proc.returncode == 0 and lines:
                job.data = json.loads(lines[-1])
            jobs.append(job)
        return jobs

    def script(self, name: str, *args: str) -> list[str]:
        return [str(self.python), str(JOBS / name), *args]

    def three(self, name: str, *args: str, seeds=(11, 11, 12), **env: str) -> list[Job]:
        """The script run twice with one seed and once with another, at the same time; each must succeed."""
        jobs = self.run_many([(self.script(name, *args), self.env(seed, **env)) for seed in seeds])
        for job in jobs:
            assert job.returncode == 0, job.stderr[-3000:]
        return jobs


@pytest.fixture(scope="session")
def bootstrap_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bootstrap-venv")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    install_bootstrap(Path(purelib))
    return python


@pytest.fixture
def runner(bootstrap_python: Path, tmp_path: Path) -> Runner:
    return Runner(bootstrap_python, tmp_path)

