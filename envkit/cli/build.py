"""`envkit build [LOCKFILE]`: the lock's image, assembled by envkit, compared with the lock's expected image ID.

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
    no_cache: bool = typer.Option(False, "--no-cache", help="Install the venv again even if the image exists."),
    check: bool = typer.Option(False, "--check",
                               help="Rebuild from nothing (the base from its .debs, the venv) and compare the image "
                                    "ID with the lock's and with the earlier build's; exit 29 when it differs."),
    pin: bool = typer.Option(False, "--pin", help="Build every CPU profile and record their image IDs in LOCKFILE."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the build plan and exit; no engine needed."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Build the image for LOCKFILE (default: the project's), print its image ID, and say whether it is the one the
    lock expects ("matches the lock", or what differs).

    Nothing is fetched by name: the base is made from its pinned .debs or pulled by digest, the wheels are fetched
    by sha256 into envkit's cache, and the venv is installed with no network. The same lock again is a cache hit.
    Exit codes: 0 built (a differing ID is reported, not an error, unless --check); 29 --check found a difference.
    """
    from envkit.lock.model import load_lockfile

    engine = None
    if lockfile is None:
        lockfile, engine = _project_lock(json_out)
    lock = load_lockfile(lockfile)
    if dry_run:
        from envkit.image.render import plan_build, render_plan

        plan = plan_build(lock, cpu_profile)
        if json_out:
            print_json({"base": lock.base.kind, "base_ref": lock.base.ref, "requirements": plan.requirements,
                        "env": plan.env, "labels": plan.labels, "build_key": plan.build_key, "tag": plan.tag,
                        "recipe": plan.recipe, "expected": lock.images.get(cpu_profile),
                        "venv_command": plan.venv_command})
        else:
            typer.echo(render_plan(lock, plan, cpu_profile), nl=False)
        return

    from envkit.cli._progress import byte_bars
    from envkit.engine import connect
    from envkit.image.builder import build_and_push

    engine = engine or connect()
    show = not json_out and err_console.is_terminal
    say = (lambda s: err_console.print(s, highlight=False, markup=False)) if not json_out else None
    if pin:
        _pin(engine, lock, lockfile, json_out, show, say)
        return
    with byte_bars(enabled=show) as bar:
        result = build_and_push(engine, lock, cpu_profile=cpu_profile, no_cache=no_cache, push=push, progress=bar,
                                on_step=say, check=check)
    for line in result.warnings:
        err_console.print(f"warning: {line}", highlight=False, markup=False)
    comparison = result.comparison
    if json_out:
        print_json({"image_id": result.image_id, "tag": result.tag, "build_key": result.build_key,
                    "cache_hit": result.cache_hit, "seconds": round(result.seconds, 3),
                    "lock_sha256": lock.content_sha256, "repo_digest": result.repo_digest,
                    "lock": {"status": comparison.status, "expected": comparison.expected,
                             "reasons": comparison.reasons},
                    "warnings": result.warnings, "base": result.base_how,
                    "layers": {"base": result.base_layers, "venv": result.venv_layer},
                    **({"check": {"previous": result.previous}} if check else {})})
    else:
        how = "cache hit" if result.cache_hit else f"built in {result.seconds:.0f} s"
        err_console.print(f"{result.tag} ({how})", highlight=False, markup=False)
        err_console.print(comparison.line(result.image_id, lock, cpu_profile), highlight=False, markup=False)
        if check:
            err_console.print(_previous_line(result), highlight=False, markup=False)
        if result.repo_digest:
            err_console.print(f"pushed {result.repo_digest}", highlight=False, markup=False)
        typer.echo(result.image_id)
    if check:
        _check_verdict(result, lock, cpu_profile)


def _previous_line(result) -> str:
    if result.previous is None:
        return "no earlier build of this key on this host to compare with"
    same = "equals" if result.previous == result.image_id else "differs from"
    return f"the rebuilt image {same} the earlier build here ({result.previous})"


def _check_verdict(result, lock, profile: str) -> None:
    """--check: the rebuilt image must be the lock's expected one, and the earlier build's (those that exist)."""
    from envkit.errors import ImageMismatchError
    from envkit.image.expected import DIFFERS, UNPINNED

    comparison = result.comparison
    if comparison.status == DIFFERS:
        raise ImageMismatchError(f"--check: the image rebuilt from nothing, {result.image_id[:19]}, is not the "
                                 f"lock's {comparison.expected[:19]} ({'; '.join(comparison.reasons)})")
    if result.previous is not None and result.previous != result.image_id:
        raise ImageMismatchError(f"--check: the image rebuilt from nothing, {result.image_id[:19]}, is not the "
                                 f"earlier build here, {result.previous[:19]}: the build is not reproducible on "
                                 "this host")
    if comparison.status == UNPINNED and result.previous is None:
        raise ImageMismatchError(f"--check: nothing to compare the rebuilt image with (the lock {lock.name} records "
                                 f"no image ID for {profile}, and this host built none before)",
                                 hint="record the IDs with `envkit build LOCK --pin`, then check")


def _pin(engine, lock, lockfile: Path, json_out: bool, show: bool, say) -> None:
    """Build every CPU profile and record the IDs and their parts in the lockfile."""
    from envkit.cli._progress import byte_bars
    from envkit.image.builder import build_image
    from envkit.image.expected import pin
    from envkit.lock.model import ImageParts

    results = {}
    with byte_bars(enabled=show) as bar:
        for profile in CPU_PROFILES:
            results[profile] = build_image(engine, lock, cpu_profile=profile, progress=bar, on_step=say)
    first = results[CPU_PROFILES[0]]
    parts = ImageParts(recipe=first.recipe, base_layers=tuple(first.base_layers), venv_layer=first.venv_layer)
    pinned = pin(lockfile, lock, {p: r.image_id for p, r in results.items()}, parts)
    if json_out:
        print_json({"lockfile": str(lockfile), "images": pinned.images, "content_sha256": pinned.content_sha256})
        return
    for profile, result in results.items():
        err_console.print(f"{profile}: {result.image_id}", highlight=False, markup=False)
    err_console.print(f"recorded the expected image IDs in {lockfile} (its content hash is unchanged)",
                      highlight=False, markup=False)
    typer.echo(str(lockfile))


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
