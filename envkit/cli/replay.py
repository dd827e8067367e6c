"""`envkit replay RUN_ID`: platform check, the same image, the same inputs, a bitwise verdict."""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, out_console, print_json


@app.command("replay")
def replay_cmd(
    run_id: str = typer.Argument(..., help="The run to replay (see `envkit runs`)."),
    force: bool = typer.Option(False, "--force", help="Replay on a platform that differs in numerics; marked so."),
    rebuild: bool = typer.Option(False, "--rebuild",
                                 help="If the image cannot be had, rebuild it from the recorded lockfile "
                                      "(the image ID will differ)."),
    mount: list[str] = typer.Option(None, "--mount", help="DST=SRC: take the input mounted at DST from SRC here."),
    json_out: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Replay RUN_ID on this host and say whether every output is bitwise identical.

    Exit codes: 0 IDENTICAL, 3 DIVERGED, 4 FAILED; 40 platform refused (see --force), 41 an input changed.
    """
    from envkit.engine import connect
    from envkit.errors import JobError
    from envkit.fingerprint import host_fingerprint
    from envkit.replay import acquire_image, container_differences, host_differences, replay_job, run_replay
    from envkit.run.executor import Sink
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    store = FileStore(store_dir())
    record = store.read(run_id)
    run_dir = store.run_dir(run_id)
    overrides = {}
    for m in mount or []:
        dst, sep, src = m.partition("=")
        if not sep or not dst.startswith("/"):
            raise JobError(f"--mount {m!r} is not DST=SRC", hint="e.g. --mount /data=./data")
        overrides[dst.rstrip("/")] = Path(src).expanduser().resolve()
    client = connect()

    now = host_fingerprint(client)
    mismatch = _check(host_differences(record, now), force)
    image_id, notes = acquire_image(client, record, run_dir, rebuild)
    mismatch = _check(container_differences(client, store, record, image_id, now.get("host") or {}), force) \
        or mismatch
    job = replay_job(record, run_dir, image_id, mismatch, overrides)
    replay, verdict = run_replay(client, store, record, job, sink=Sink(None, None) if json_out else None)
    if notes:
        replay.notes += notes
        store.write(replay)
    if json_out:
        print_json({"run_id": replay.run_id, "replay_of": run_id, "platform_mismatch": mismatch, "notes": notes,
                    "verdict": verdict.to_dict()})
    else:
        for note in notes:
            err_console.print(f"note: {note}", highlight=False)
        out_console.print(render_verdict(verdict, run_id, replay.run_id), highlight=False)
    raise typer.Exit(verdict.exit)


def _check(diffs, force: bool) -> bool:
    """Refuse (or, forced, note) numerics-changing differences; print the table of them."""
    from envkit.errors import PlatformMismatchError

    bad = [d for d in diffs if d.changes_numerics]
    if not bad:
        return False
    err_console.print(render_diffs(bad), highlight=False)
    if not force:
        raise PlatformMismatchError(
            f"this host differs from the recorded one in {len(bad)} field{'s' if len(bad) > 1 else ''} that "
            f"change numerics ({', '.join(d.path for d in bad[:3])}{', ...' if len(bad) > 3 else ''})")
    err_console.print("warning: replaying anyway (--force); the replay is marked as on a mismatched platform",
                      highlight=False)
    return True


def render_diffs(diffs) -> str:
    """A plain-text table: field, recorded, current, why."""
    rows = [("FIELD", "RECORDED", "CURRENT", "WHY IT MATTERS")]
    for d in diffs:
        rows.append((d.path, _short(d.recorded), _short(d.current), d.why))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows)


def _short(value) -> str:
    text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def render_verdict(verdict, original: str, replay: str) -> str:
    lines = [f"replay {replay} of {original}: {verdict.kind}"]
    if verdict.kind == "FAILED":
        lines.append(f"  the replayed job exited {verdict.exit_code} (the original exited {verdict.original_exit_code})")
    for f in verdict.files:
        lines.append(f"  {f.change:8} {f.path}")
        for t in f.tensors or []:
            if "max_abs_diff" in t:
                lines.append(f"           tensor {t['name']}: max |diff| {t['max_abs_diff']:.3g} "
                             f"({t['elements_differing']}/{t['elements']} elements)")
            else:
                lines.append(f"           tensor {t['name']}: {', '.join(f'{k}={v}' for k, v in t.items() if k != 'name')}")
        if f.tensor_error:
            lines.append(f"           (not compared as tensors: {f.tensor_error})")
    if verdict.kind == "DIVERGED" and verdict.divergence and verdict.divergence.get("message"):
        lines.append(f"  training: {verdict.divergence['message']}")
    if verdict.stdout_differs:
        lines.append(f"  stdout differs from line {verdict.stdout_first_line} (not part of the verdict: logs carry "
                     "timings)")
    return "\n".join(lines)
