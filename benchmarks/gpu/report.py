"""The GPU check's bookkeeping: one JSON file per step, then the summary (JSON and text) with the GPU's name on
every figure.

    python report.py step OUT NAME STATUS SECONDS DETAIL [FIGURES_JSON]
    python report.py summary OUT GPU_NAME MODE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def step(out: Path, name: str, status: str, seconds: str, detail: str, figures: str = "{}") -> None:
    steps = out / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    try:
        figs = json.loads(figures or "{}")
    except ValueError:
        figs = {"unparsed": figures[:500]}
    n = len(list(steps.glob("*.json")))
    (steps / f"{n:02d}-{name}.json").write_text(json.dumps(
        {"step": name, "status": status, "seconds": round(float(seconds or 0), 1), "detail": detail[:500],
         "figures": figs}, indent=1))


def summary(out: Path, gpu: str, mode: str) -> int:
    steps = [json.loads(p.read_text()) for p in sorted((out / "steps").glob("*.json"))]
    failed = [s["step"] for s in steps if s["status"] == "failed"]
    doc = {"gpu": gpu, "mode": mode, "ok": not failed, "failed": failed, "steps": steps}
    (out / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"envkit GPU check on {gpu} ({mode} mode): {'ALL OK' if not failed else 'FAILED: ' + ', '.join(failed)}"]
    for s in steps:
        figs = ", ".join(f"{k}={v}" for k, v in s["figures"].items() if not isinstance(v, (dict, list)))
        lines.append(f"[{gpu}] {s['step']:<12} {s['status']:<8} {s['seconds']:>6.1f} s  {s['detail']}"
                     + (f"  ({figs})" if figs else ""))
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    sys.stdout.write(text)
    return 0 if not failed else 1


if __name__ == "__main__":
    cmd, out, *rest = sys.argv[1:]
    if cmd == "step":
        step(Path(out), *rest)
        sys.exit(0)
    sys.exit(summary(Path(out), *rest))
