"""`envkit replay RUN_ID | REGISTRY/REPO@sha256:...`: platform check, the same image, the same inputs, a bitwise
verdict. A run from a registry is fetched and checked first (envkit.remote.fetch)."""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, out_console, print_json
from envkit.cli._options import complete_run_id, optional_value_command
from envkit.tracking.config import MLFLOW_OPTION_HELP, looks_like_tracking_uri


@app.command("replay", cls=optional_value_command({"--mlflow": looks_like_tracking_uri}))
def replay_cmd(
    run_id: str = typer.Argument(..., metavar="RUN_ID|REF",
                                 help="The run to replay: a run id (see `envkit runs`), a unique prefix of one, "
                                      "`last`, or REGISTRY/REPO@sha256:... as `envkit push` printed it.",
                                 autocompletion=complete_run_id),
    registry_repo: str = typer.Option(None, "--from", metavar="REGISTRY/REPO",
                                      help="Fetch RUN_ID from this registry first (as `envkit pull` does)."),
    force: bool = typer.Option(False, "--force", help="Replay on a platform that differs in numerics; marked so."),
    rebuild: bool = typer.Option(False, "--rebuild",
                                 help="If the image cannot be had, rebuild it from the recorded lockfile; the "
                                      "verdict says whether the rebuilt image is the recorded one."),
    mount: list[str] = typer.Option(None, "--mount", help="DST=SRC: take the input mounted at DST from SRC here."),
    no_pin: bool = typer.Option(False, "--no-pin",
                                help="When recorded steps bracket the divergence more than one step apart, do not "
                                     "rerun both jobs to name the exact step."),
    ignore_lines: list[str] = typer.Option(None, "--ignore-lines", metavar="REGEX",
                                           help="stdout lines matching REGEX are left out of the comparison "
                                                "(timings); repeatable; also ignore_lines in the project config."),
    upstream: bool = typer.Option(False, "--upstream",
                                  help="Replay the runs whose outputs it took as --input first (in order), then "
                                       "this run on their replays' outputs."),
    gpus: str = typer.Option(None, "--gpus", help="Replay with this GPU request instead of the recorded one (all | "
                                                  "none | N | device=0,2); fewer or other GPUs are a mismatch."),
    json_out: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
    mlflow: str = typer.Option(None, "--mlflow", metavar="[URI]",
                               help=MLFLOW_OPTION_HELP + " Replays export whenever a URI is configured; the "
                                    "verdict goes on the original's MLflow run."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="No MLflow export, even where a URI is configured."),
) -> None:
    """Replay a run on this host and say whether every output is bitwise identical.

    A run from a registry (REGISTRY/REPO@sha256:..., or RUN_ID --from REGISTRY/REPO) is fetched first: every file
    checked against its record, the image pulled by its recorded digest, the platform checked.

    When the replay diverges and the step traces bracket it between recorded steps more than one step apart, both
    jobs are run again with every step between them traced, to name the exact step (--no-pin skips this).

    A run that wrote no output file is judged on its stdout. Exit codes: 0 IDENTICAL, 3 DIVERGED, 4 FAILED,
    5 UNVERIFIED (nothing to compare); 40 platform refused (see --force), 41 an input changed, 37 this host cannot
    give the run its GPUs (too few, or a driver too old for the image's CUDA).
    """
    from envkit.cli._progress import LiveProgress
    from envkit.cli.mlflow import export_after_replay, mlflow_settings
    from envkit.engine import connect
    from envkit.errors import MountError, PlatformMismatchError
    from envkit.pin import replay_pinner
    from envkit.lineage import replay_chain
    from envkit.remote import is_reference
    from envkit.replay import replay
    from envkit.run.executor import Sink
    from envkit.settings import store_dir
    from envkit.store.filestore import FileStore

    overrides = {}
    for m in mount or []:
        dst, sep, src = m.partition("=")
        if not sep or not dst.startswith("/"):
            raise MountError(f"--mount {m!r} is not DST=SRC", hint="e.g. --mount /data=./data")
        overrides[dst.rstrip("/")] = Path(src).expanduser()
    store = FileStore(store_dir())
    tracker = None if no_mlflow else mlflow_settings(mlflow, auto=True)  # a bad --mlflow before any work
    if registry_repo is not None or is_reference(run_id):
        from envkit.cli.remote import fetch_run

        run_id = fetch_run(store, run_id, registry_repo, quiet=json_out).run_id
    else:
        run_id = store.resolve(run_id)
    store.read(run_id)  # an unknown run is reported before the engine is asked for anything
    patterns = verdict_patterns(list(ignore_lines or []))
    progress = LiveProgress(enabled=not json_out and err_console.is_terminal)

    def on_forced(diffs) -> None:
        err_console.print(render_diffs(diffs), highlight=False)
        err_console.print("warning: replaying anyway (--force); the replay is marked as on a mismatched platform",
                          highlight=False)

    def say(message: str) -> None:  # what the pin reruns are doing: a few lines, each before a job's run
        err_console.print(message, highlight=False)

    engine = connect()
    options = {"force": force, "rebuild": rebuild, "mount_overrides": overrides, "on_forced": on_forced,
               "sink": Sink(None, None) if json_out else None, "ignore_lines": patterns, "progress": progress,
               "after_judge": None if no_pin else replay_pinner(engine, store, None if json_out else say)}
    try:
        if upstream:
            chain = replay_chain(engine, store, run_id, on_replayed=None if json_out else _print_result, **options)
        else:
            result = replay(engine, store, run_id, gpus=gpus, **options)
    except PlatformMismatchError as exc:
        err_console.print(render_diffs(exc.differences), highlight=False)
        raise
    finally:
        progress.pause()
    # Verdicts go to the originals' MLflow runs; tracker trouble is a warning, never the verdict's exit code.
    if upstream:
        exported = [export_after_replay(store, r, tracker) for r in chain.results] if tracker else None
        if json_out:
            print_json(chain.to_dict() | ({"mlflow": exported} if tracker else {}))
        elif chain.stopped_at:
            err_console.print(f"stopped: the replay of upstream run {chain.stopped_at} is not IDENTICAL, so the runs "
                              "after it were not replayed", highlight=False)
        raise typer.Exit(chain.exit_code)
    if json_out:
        print_json({"run_id": result.run_id, "replay_of": run_id, "platform_mismatch": bool(result.forced),
                    "notes": result.notes, "verdict": result.verdict.to_dict()}
                   | ({"mlflow": export_after_replay(store, result, tracker)} if tracker else {}))
    else:
        _print_result(result)
        if tracker:
            export_after_replay(store, result, tracker)
    raise typer.Exit(result.exit_code)


def _print_result(result) -> None:
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False)
    out_console.print(render_verdict(result.verdict, result.original.run_id, result.run_id), highlight=False)


def verdict_patterns(given: list[str]) -> list[str]:
    """The project configuration's ignore_lines, then --ignore-lines (each checked to be a regular expression)."""
    from envkit.errors import ProjectConfigError
    from envkit.run.defaults import project_config
    from envkit.stdoutcompare import compile_patterns, configured_patterns

    try:
        compile_patterns(given)
    except ProjectConfigError as exc:
        raise typer.BadParameter(exc.message, param_hint="--ignore-lines") from None
    return list(dict.fromkeys([*configured_patterns(project_config()), *given]))


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
    if verdict.image is not None:  # --rebuild: on the recorded image, or on another one
        lines[0] += (" (on the rebuilt image, which is the recorded one)" if verdict.image["same"] else
                     f" (on a rebuilt image, {verdict.image['rebuilt'][:19]}, not the recorded "
                     f"{str(verdict.image['recorded'])[:19]})")
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
        if verdict.divergence.get("pin_message"):
            lines.append(f"  pin: {verdict.divergence['pin_message']}")
    lines += render_compared(verdict)
    return "\n".join(lines)


def render_compared(verdict) -> list[str]:
    """What the verdict compared: the output files, or (for a run without any) stdout, line by line."""
    stdout = verdict.stdout or {}
    masked = f", {stdout.get('masked')} masked" if stdout.get("masked") else ""
    if verdict.kind == "FAILED":
        return []
    if not verdict.stdout_is_output:
        lines = [f"  compared {verdict.files_compared} output file{'s' if verdict.files_compared != 1 else ''}"]
        if verdict.stdout_differs:
            lines.append(f"  stdout differs from line {verdict.stdout_first_line} (not part of the verdict: the run "
                         "has output files)")
        return lines
    if verdict.kind == "UNVERIFIED":
        return [f"  nothing compared: the run wrote no output file and printed no line to compare{masked}",
                "  (write results to files, or print them; UNVERIFIED is never taken for IDENTICAL)"]
    if verdict.stdout_differs:
        return [(f"  stdout line {verdict.stdout_first_line} differs (the run wrote no output file: stdout is its "
                 "output)"), f"    original: {_quoted(stdout.get('original'))}",
                f"    replay:   {_quoted(stdout.get('replay'))}"]
    plural = "s" if stdout.get("lines") != 1 else ""
    return [f"  compared stdout: {stdout.get('lines')} line{plural}{masked} (the run wrote no output file)"]


def _quoted(line) -> str:
    from envkit.cli._console import printable

    return "(the log ends before this line)" if line is None else printable(repr(line)[1:-1])
