"""Start-up cost of the seeding bootstrap: `python -c pass` with it active against plain Python, in one run.

    python benchmarks/bench_bootstrap_startup.py [--runs 80] [--torch-runs 0] [--baseline REV]

Builds throw-away venvs (no system site-packages, like the image's venv) and times `python -c pass` as a fresh
process, the variants interleaved run by run so that load from elsewhere hits them alike. All runs use
PYTHONDONTWRITEBYTECODE=1, as the image does.

- plain: a venv without the bootstrap;
- installed, idle: the in-job package (envkit_injob) and envkit-bootstrap.pth in site-packages, as an image has
  them, ENVKIT_SEED unset (every Python process in an image outside `envkit run`);
- active: ENVKIT_SEED, PYTHONHASHSEED and ENVKIT_REPORT_DIR set, as `envkit run` sets them: the finder is installed
  and the report written;
- active, no .pyc: the same without a byte-compiled bootstrap (why the image build must compile it: with
  PYTHONDONTWRITEBYTECODE=1 the cache is never written, so every process would compile the module again).

With --baseline REV (default e8505ff~1, the last commit before the in-job code became the ``envkit_injob`` package)
it also times the bootstrap as it was at REV, active, in the same run: whether the start-up stayed where it was is
a comparison in one run, not against a figure taken on another day (the absolute figure moves by a millisecond from
run to run on these shared machines). ``--baseline none`` skips it; REV needs the repository's history.

With --torch-runs N it also times `python -c "import torch"` with the bootstrap idle against active (strict: torch
seeded, its determinism flags set, the report written), in a venv that sees the host's site-packages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envkit.image.render import in_image_files


def make_venv(root: Path, name: str, bootstrap: bool, compiled: bool = True, system: bool = False) -> Path:
    venv = root / name
    flags = ["--system-site-packages"] if system else []
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", *flags, str(venv)], check=True)
    python = venv / "bin" / "python"
    if bootstrap:
        purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        site = Path(purelib)
        for name, data in in_image_files().items():  # exactly what an image's site-packages gets
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(data)
        if compiled:
            subprocess.run([str(python), "-m", "compileall", "-q", str(site / "envkit_injob")], check=True)
    return python


def baseline_venv(root: Path, rev: str) -> Path | None:
    """A venv with the bootstrap as it was at git revision ``rev``: the ``envkit_injob`` package, or before it the
    one module ``envkit/run/bootstrap.py`` as ``envkit_bootstrap``; None when git cannot show that revision."""
    repo = Path(__file__).resolve().parents[1]

    def show(path: str) -> bytes | None:
        out = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True,
                             check=False)
        return out.stdout if out.returncode == 0 else None

    pth = show("docker/envkit-bootstrap.pth")
    if pth is None:
        return None
    python = make_venv(root, "baseline", bootstrap=False)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "envkit-bootstrap.pth").write_bytes(pth)
    listed = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", f"{rev}:envkit/injob"],
                            capture_output=True, text=True, check=False)
    if listed.returncode == 0:
        (site / "envkit_injob").mkdir()
        for name in listed.stdout.split():
            if name.endswith(".py"):
                (site / "envkit_injob" / name).write_bytes(show(f"envkit/injob/{name}") or b"")
        target = site / "envkit_injob"
    else:
        module = show("envkit/run/bootstrap.py")
        if module is None:
            return None
        target = site / "envkit_bootstrap.py"
        target.write_bytes(module)
    subprocess.run([str(python), "-m", "compileall", "-q", str(target)], check=True)
    return python


def time_once(python: Path, env: dict[str, str], code: str = "pass") -> float:
    start = time.perf_counter()
    subprocess.run([str(python), "-c", code], env=env, check=True)
    return time.perf_counter() - start


def report(title: str, times: dict[str, list[float]]) -> dict[str, float]:
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    reference = next(iter(medians.values()))
    print(title)
    print(f"{'variant':<22} {'median ms':>10} {'added ms':>9} {'ratio':>6}")
    for name, median in medians.items():
        print(f"{name:<22} {median:>10.2f} {median - reference:>+9.2f} {median / reference:>6.3f}")
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=80, help="runs per variant (interleaved)")
    parser.add_argument("--torch-runs", type=int, default=0, help="also time `import torch`, this many runs each")
    parser.add_argument("--baseline", default="e8505ff~1",
                        help="also time the bootstrap of this git revision, active ('none': skip)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="envkit-bench-") as tmp:
        root = Path(tmp)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("ENVKIT_") and k not in ("PYTHONHASHSEED", "PYTHONPATH")}
        base["PYTHONDONTWRITEBYTECODE"] = "1"
        run_env = dict(base, ENVKIT_SEED="42", PYTHONHASHSEED="42", ENVKIT_REPORT_DIR=str(root / "reports"))
        plain = make_venv(root, "plain", bootstrap=False)
        with_bootstrap = make_venv(root, "bootstrap", bootstrap=True)
        uncompiled = make_venv(root, "uncompiled", bootstrap=True, compiled=False)
        variants = {
            "plain": (plain, base),
            "installed, idle": (with_bootstrap, base),
            "active": (with_bootstrap, run_env),
            "active, no .pyc": (uncompiled, run_env),
        }
        baseline = baseline_venv(root, args.baseline) if args.baseline != "none" else None
        if baseline is not None:
            variants[f"active, {args.baseline}"] = (baseline, run_env)
        elif args.baseline != "none":
            print(f"(git cannot show {args.baseline}: no baseline in this run)")
        for python, env in variants.values():  # warm the page cache before timing
            time_once(python, env)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.runs):
            for name, (python, env) in variants.items():
                times[name].append(time_once(python, env))
        medians = report(f"python -c pass, median of {args.runs} interleaved runs each "
                         f"(Python {sys.version.split()[0]})", times)
        added = medians["active"] - medians["plain"]
        print(f"bootstrap active adds {added:.2f} ms ({medians['active'] / medians['plain']:.3f}x plain); "
              "budget 15 ms")
        if baseline is not None:
            then = medians[f"active, {args.baseline}"] - medians["plain"]
            print(f"the bootstrap of {args.baseline} added {then:.2f} ms in the same run: now {added - then:+.2f} ms")

        if args.torch_runs:
            host = make_venv(root, "host", bootstrap=True, system=True)
            torch_times: dict[str, list[float]] = {"not active": [], "active": []}
            for _ in range(args.torch_runs):
                for name, env in (("not active", base), ("active", run_env)):
                    torch_times[name].append(time_once(host, env, "import torch"))
            print()
            report(f"python -c 'import torch', median of {args.torch_runs} interleaved runs each", torch_times)


if __name__ == "__main__":
    main()
