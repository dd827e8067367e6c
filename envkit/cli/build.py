"""`envkit build [LOCKFILE]`: the lock's image, built offline from hash-checked wheels (or found in the cache).

Without LOCKFILE, the project's environment (envkit.run.environment): the lock its configuration names, the one lock
under lockfiles/, or envkit.yaml, locked first.
"""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import choice
from envkit.settings import CPU_PROFILES, DEFAULT_CPU_PROFILE


@app.command("build")
def build_cmd(
    lockfile: Path = typer.Argument(None, metavar="LOCKFILE",
                                    help="A lockfile written by `envkit lock`; default: the project's (the lock its "
                                         "configuration names, the one in lockfiles/, or envkit.yaml locked now)."),
    cpu_profile: str = typer.Option(DEFAULT_CPU_PROFILE, "--cpu-profile", callback=choice(CPU_PROFILES),
                                    help="native, or portable (bit-identical CPU results across CPU models)."),
    push: str = typer.Option(None, "--push", metavar="REGISTRY/REPO", help="Push and report the registry digest."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild even if the image exists."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the rendered Dockerfile and exit; no engine needed."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build the image for LOCKFILE (default: the project's) and print its image ID.

    Wheels are fetched into a content-addressed cache and checked against the lock's hashes; the image build runs
    with no network. The same lock again is a cache hit: no build, the same image ID.
    """
    from envkit.lock.model import load_lockfile

    engine = None
    if lockfile is None:
        lockfile, engine = _project_lock(json_out)
    lock = load_lockfile(lockfile)
    if dry_run:
        from envkit.image.render import plan_build

        plan = plan_build(lock, cpu_profile)
        if json_out:
            print_json({"dockerfile": plan.dockerfile, "requirements": plan.requirements, "labels": plan.labels,
                        "build_key": plan.build_key, "tag": plan.tag})
        else:
            typer.echo(plan.dockerfile, nl=False)
        return

    from envkit.cli._progress import byte_bars
    from envkit.engine import connect
    from envkit.image.builder import build_and_push

    engine = engine or connect()
    show = not json_out and err_console.is_terminal
    with byte_bars(enabled=show) as bar:
        result = build_and_push(engine, lock, cpu_profile=cpu_profile, no_cache=no_cache, push=push, progress=bar,
                                on_step=(lambda s: err_console.print(s, highlight=False)) if not json_out else None)
    for line in result.warnings:
        err_console.print(f"warning: {line}", highlight=False)
    if json_out:
        print_json({"image_id": result.image_id, "tag": result.tag, "build_key": result.build_key,
                    "cache_hit": result.cache_hit, "seconds": round(result.seconds, 3),
                    "lock_sha256": lock.content_sha256, "repo_digest": result.repo_digest,
                    "warnings": result.warnings})
        return
    how = "cache hit" if result.cache_hit else f"built in {result.seconds:.0f} s"
    err_console.print(f"{result.tag} ({how})")
    if result.repo_digest:
        err_console.print(f"pushed {result.repo_digest}")
    typer.echo(result.image_id)


def _project_lock(quiet: bool):
    """The project's lockfile (locked from envkit.yaml first when it has none yet), and the engine if one was used."""
    from envkit.run.environment import ensure_lock, find_environment

    env = find_environment(images=False)
    for note in env.notes:
        err_console.print(f"note: {note}", highlight=False)
    engine = None
    if env.needs_lock:
        from envkit.engine import connect

        engine = connect()
    say = None if quiet else (lambda s: err_console.print(s, highlight=False))
    lock = ensure_lock(engine, env, on_step=say)
    if say is not None:
        say(f"environment: {lock.relative_to(env.root) if lock.is_relative_to(env.root) else lock} ({env.source})")
    return lock, engine
