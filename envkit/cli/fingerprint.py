"""`envkit fingerprint`: this host's hardware fingerprint, as readable sections or JSON."""

from __future__ import annotations

from typing import Any

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json


@app.command("fingerprint")
def fingerprint_cmd(
    json_out: bool = typer.Option(False, "--json", help="Print the fingerprint as JSON."),
) -> None:
    """Print this host's fingerprint: CPU and its instruction sets, memory, OS, Docker engine, NVIDIA GPUs.

    These are the facts a run records and a replay compares. Without a reachable Docker engine the engine section is
    left out (a note on stderr says so); everything else is still printed.
    """
    from envkit.engine import connect
    from envkit.errors import EngineUnavailableError
    from envkit.fingerprint import host_fingerprint

    engine = None
    try:
        engine = connect(timeout=10)
    except EngineUnavailableError as exc:
        err_console.print(f"note: {exc.message}; the engine section is left out", highlight=False)
    fp = host_fingerprint(engine)
    if json_out:
        print_json(fp)
    else:
        typer.echo(render_fingerprint(fp), nl=False)


def render_fingerprint(fp: dict[str, Any]) -> str:
    """The fingerprint as aligned ``name  value`` lines under section headings."""
    host = fp.get("host") or {}
    rows: list[tuple[str, str]] = [("host", "")]
    vendor = f" ({host['cpu_vendor']})" if host.get("cpu_vendor") else ""
    rows += [
        ("arch", _v(host.get("arch"))),
        ("cpu", f"{_v(host.get('cpu_model'))}{vendor}"),
        ("instruction sets", " ".join(host.get("cpu_flags") or []) or "-"),
        ("cores", f"{_v(host.get('logical_cores'))} logical, {_v(host.get('cpus_available'))} available"),
        ("memory", _gib(host.get("memory_bytes"))),
        ("kernel", _v(host.get("kernel"))),
        ("os", _v(host.get("os"))),
        ("hostname", _v(host.get("hostname"))),
    ]
    rows += _errors(host)
    engine = fp.get("engine")
    if engine is not None:
        rows.append(("engine", ""))
        if "error" in engine:
            rows.append(("error", engine["error"]))
        else:
            rows += [
                ("version", f"{_v(engine.get('version'))} (API {_v(engine.get('api_version'))})"),
                ("storage driver", _v(engine.get("storage_driver"))),
                ("runtimes", " ".join(engine.get("runtimes") or []) or "-"),
                ("os", f"{_v(engine.get('os'))} {_v(engine.get('arch'))}"),
            ]
    gpus = fp.get("gpus") or {}
    rows.append(("gpus", ""))
    if gpus.get("driver_version") is not None:
        rows.append(("driver", f"{gpus['driver_version']} (CUDA {_v(gpus.get('cuda_driver_version'))})"))
    for dev in gpus.get("devices") or []:
        rows.append((f"gpu {dev.get('index')}", f"{_v(dev.get('name'))}, compute capability "
                     f"{_v(dev.get('compute_capability'))}, {_gib(dev.get('memory_bytes'))}, {_v(dev.get('uuid'))}"))
        rows += _errors(dev)
    if not gpus.get("available"):
        rows.append(("none", _v(gpus.get("reason"))))
    rows += _errors(gpus)
    width = max(len(name) for name, value in rows if value) + 2
    return "".join(f"{name}\n" if not value else f"  {name:<{width}}{value}\n" for name, value in rows)


def _errors(section: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"probe {name} failed", text) for name, text in (section.get("errors") or {}).items()]


def _v(value: Any) -> str:
    return "?" if value is None else str(value)


def _gib(value: Any) -> str:
    return "?" if not isinstance(value, int) else f"{value / 2**30:.1f} GiB"
