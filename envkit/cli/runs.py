"""`envkit runs` (the recorded runs, newest first) and `envkit show RUN_ID` (one run)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json, printable
from envkit.cli._options import complete_run_id

if TYPE_CHECKING:
    from envkit.store.layout import RunLayout
    from envkit.store.record import RunRecord

_COLUMNS = ("RUN ID", "STATUS", "SEED", "DETERMINISM", "SCRIPT", "EXIT", "DURATION", "IMAGE")


@app.command("runs")
def runs_cmd(
    limit: int = typer.Option(0, "--limit", "-n", min=0, help="Show at most this many runs (0: all)."),
    json_out: bool = typer.Option(False, "--json", help="Print the runs as a JSON list."),
) -> None:
    """List the recorded runs, newest first.

    The store is ENVKIT_HOME, else .envkit in the current folder. Run folders that cannot be read are skipped with a
    warning on stderr.
    """
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    store = FileStore(store_dir())
    listing = store.list(limit=limit or None)
    for broken in listing.broken:
        err_console.print(f"warning: skipped {printable(broken.name)}: {printable(broken.reason)}", highlight=False,
                          markup=False)
    if json_out:
        # One run per line: still a JSON list, made of the summaries' stored text (encoding 10,000 objects again,
        # let alone with indent=, which falls back to json's pure-Python encoder, costs more than the listing).
        rows = listing.summaries_json
        sys.stdout.write("[\n  " + ",\n  ".join(rows) + "\n]\n" if rows else "[]\n")
        sys.stdout.flush()
        return
    if not listing.runs:
        err_console.print(f"no runs in {store.root}", highlight=False, markup=False)
        return
    typer.echo(render_runs_table(listing.rows), nl=False)


@app.command("show")
def show_cmd(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="A run id from `envkit runs`, a unique prefix, or last.",
                                 autocompletion=complete_run_id),
    json_out: bool = typer.Option(False, "--json", help="Print the whole record as JSON."),
) -> None:
    """Show one run: command, seed, image, code, inputs, outputs, logs, timings and host."""
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    store = FileStore(store_dir())
    record = store.read(store.resolve(run_id))
    if json_out:
        print_json(record.to_dict())
    else:
        typer.echo(render_record(record, store.layout(record.run_id)), nl=False)


def render_runs_table(runs: Iterable[Mapping[str, Any]]) -> str:
    """Fixed-width columns, one run a line (plain text: fast for thousands of runs, easy to grep). A record may come
    from someone else (an imported bundle), so control characters in its values are shown escaped.

    Args:
        runs: run summaries as dicts (``Listing.rows`` or ``RunSummary.to_dict()``); building 10,000 objects first
            would cost as much as the rendering.
    """
    rows = [_COLUMNS] + [
        tuple(map(printable, (s["run_id"], s["status"], _v(s["seed"], "-"), s["determinism"], _v(s["script"], "-"),
                              _v(s["exit_code"], "-"), duration(s["duration_s"]), short_image(s["image_id"]))))
        for s in runs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows)


def render_record(record: RunRecord, layout: RunLayout) -> str:
    """A readable summary of a run record; `--json` has everything. Control characters in its values (a record may
    come from someone else) are shown escaped."""
    lines = [f"run {record.run_id}: {printable(record.status)}"
             + (f" (exit {record.exit_code})" if record.exit_code is not None else "")]

    def row(name: str, value: Any) -> None:
        if value not in (None, "", []):
            lines.append(f"  {name:<13}{printable(value)}")

    row("command", " ".join(record.command))
    if record.script:
        row("script", " ".join([record.script, *record.args]).strip())
    row("job", " ".join(record.job_argv) if record.argv else None)
    if record.processes:
        row("processes", f"{record.processes} seeded Python process{'es' if record.processes != 1 else ''}, "
                         f"world size {record.world_size or 1}")
    row("seed", record.seed)
    row("determinism", f"{record.determinism}, {record.threads} thread(s), cpu profile {record.cpu_profile}")
    row("created", record.created)
    row("started", record.started)
    row("finished", record.finished)
    t = record.timings
    row("timings", ", ".join(f"{name} {duration(v)}" for name, v in
                             (("build", t.build_s), ("run", t.run_s), ("total", t.total_s)) if v is not None))
    row("image", " ".join(filter(None, [record.image.id, record.image.ref and f"({record.image.ref})"])))
    row("digest", record.image.digest)
    if record.lock is not None:
        row("lock", f"{record.lock.path or record.lock.name or '?'} (sha256 {str(record.lock.sha256)[:12]})")
    code = record.code
    if code.sha256:
        git = ""
        if code.git_commit:
            git = f", git {code.git_commit[:12]}" + (" with uncommitted changes" if code.git_dirty else "")
        row("code", f"{len(code.files)} files, sha256 {code.sha256[:12]}{git}")
    row("inputs", _files(record.inputs))
    row("upstream", ", ".join(dict.fromkeys(link.run_id for link in record.upstream)))
    for link in record.upstream:
        lines.append(f"    {printable(link.path)} of run {printable(link.run_id)} at {printable(link.target)} "
                     f"({size(link.size)}, {printable(link.sha256[:12])})")
    row("outputs", _files(record.outputs))
    for entry in record.outputs[:20]:
        lines.append(f"    {printable(entry.path)} ({size(entry.size)}, {printable(entry.sha256[:12])})")
    if len(record.outputs) > 20:
        lines.append(f"    ... {len(record.outputs) - 20} more (--json lists all)")
    row("stdout", layout.stdout_log)
    row("stderr", layout.stderr_log)
    host = record.fingerprint.host
    row("host", " ".join(filter(None, [host.get("cpu_model"), host.get("hostname") and f"on {host['hostname']}"])))
    gpus = record.fingerprint.gpus
    if gpus.get("available"):
        names = [str(d.get("name")) for d in gpus.get("devices") or []]
        row("gpus", f"--gpus {record.gpus}: {', '.join(names)} (driver {gpus.get('driver_version')})")
    elif record.gpus != "none":
        row("gpus", f"--gpus {record.gpus}: none given")
    settings = [f"shm {record.shm_size}" if record.shm_size else ("host /dev/shm" if record.ipc == "host" else None),
                f"ipc {record.ipc}" if record.ipc else None, f"user {record.user}" if record.user else None,
                " ".join(f"{k}={'/'.join(map(str, v))}" for k, v in record.ulimits.items()) or None]
    row("container", ", ".join(filter(None, settings)))
    if record.metrics:
        row("metrics", ", ".join(f"{name} {value:.6g}" for name, value in list(record.metrics.items())[:8])
            + (f", ... ({len(record.metrics)} in all)" if len(record.metrics) > 8 else ""))
    if record.sweep:
        row("sweep", f"{record.sweep.get('id')} (seed number {record.sweep.get('index')})")
    if record.scheduler:
        sched = record.scheduler
        row(sched.get("backend", "scheduler"), f"job {sched.get('job_id')} (array {sched.get('array_job_id')}, "
                                               f"task {sched.get('array_task_id')}) on {sched.get('node')}")
    row("replay of", record.replay_of)
    if record.platform_mismatch:
        row("platform", "differs from the recorded run in a field that changes numerics")
    for note in record.notes:
        row("note", note)
    return "\n".join(lines) + "\n"


def duration(seconds: float | None) -> str:
    """``0.4s``, ``12.3s``, ``4m05s``, ``2h03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def short_image(image_id: str | None) -> str:
    """The 12 hex digits docker shows for an image ID."""
    if not image_id:
        return "-"
    return image_id.split(":", 1)[-1][:12]


def size(n: float) -> str:
    """``512 B``, ``1.5 KiB`` ... ``2.0 TiB``."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _files(entries: list[Any]) -> str:
    if not entries:
        return ""
    return f"{len(entries)} files, {size(sum(e.size for e in entries))}"


def _v(value: Any, empty: str = "?") -> str:
    return empty if value is None else str(value)
