"""`envkit build LOCKFILE`: the lock's image, built offline from hash-checked wheels (or found in the cache)."""

from __future__ import annotations

from pathlib import Path

import typer

from envkit.cli import app
from envkit.cli._console import err_console, print_json
from envkit.cli._options import choice
from envkit.settings import CPU_PROFILES, DEFAULT_CPU_PROFILE


@app.command("build")
def build_cmd(
    lockfile: Path = typer.Argument(..., metavar="LOCKFILE", help="A lockfile written by `envkit lock`."),
    cpu_profile: str = typer.Option(DEFAULT_CPU_PROFILE, "--cpu-profile", callback=choice(CPU_PROFILES),
                                    help="native, or portable (bit-identical CPU results across CPU models)."),
    push: str = typer.Option(None, "--push", metavar="REGISTRY/REPO", help="Push and report the registry digest."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild even if the image exists."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the rendered Dockerfile and exit; no engine needed."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build the image for LOCKFILE and print its image ID.

    Wheels are fetched into a content-addressed cache and checked against the lock's hashes; the image build runs
    with no network. The same lock again is a cache hit: no build, the same image ID.
    """
    from envkit.lock.model import load_lockfile

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

    engine = connect()
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
