"""Runs through a registry: push a run with its image, fetch one on a host that has never seen it.

``envkit push RUN_ID REGISTRY/REPO`` makes sure the registry holds the run's image (pushed through the engine when
it does not, the new digest recorded in the run's record first), then pushes the run itself as an OCI artifact
(:mod:`envkit.store.registry`). ``envkit pull`` and ``envkit replay REGISTRY/REPO@sha256:...`` fetch it back
(:func:`fetch`): every file checked against the record before the run appears in the store, marked as imported.
Replay then pulls the image by the recorded digest and checks the platform, as for any run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envkit.engine import Engine
from envkit.errors import ImageNotFoundError, RegistryError
from envkit.store.filestore import FileStore, validate_run_id
from envkit.store.oci import Progress
from envkit.store.ociclient import Reference, RegistryClient, parse_reference
from envkit.store.record import RunRecord
from envkit.store.registry import DEFAULT_MAX_OUTPUT_BYTES, PulledRun, pull_run, push_run, resolve_run


@dataclass
class PushResult:
    run_id: str
    ref: str  # REGISTRY/REPO@sha256:... of the run
    image: str | None  # REGISTRY/REPO@sha256:... of its image in that registry
    image_pushed: bool  # the image was pushed now (else the registry had it)
    not_carried: list[dict[str, Any]] = field(default_factory=list)  # outputs over the size limit


Step = Callable[[str, str], None]  # (what: "image" or "run", a line saying it), before each long step


def push(engine: Engine, store: FileStore, run_id: str, registry_repo: str, *,
         max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, on_step: Step | None = None,
         on_progress: Progress | None = None) -> PushResult:
    """Push a run (and its image, when the registry lacks it) to ``REGISTRY/REPO``.

    Args:
        on_step: called before each long step: ``("image", line)`` before the image push through the engine (which
            reports no bytes), ``("run", line)`` before the run's own upload.
        on_progress: the run's upload, as (bytes just sent, total bytes).

    Raises:
        RunNotFoundError / InvalidRunIdError: no such run. RegistryError: the registry is unreachable or refuses.
        ImageNotFoundError: the registry lacks the image and this engine does not have it.
        StoreError / BundleError: the run folder no longer matches its record.
    """
    record = store.read(run_id)
    repo = parse_reference(registry_repo, allow_tag=False, allow_digest=False)
    image, pushed = _ensure_image(engine, store, record, repo, on_step)
    if on_step is not None:
        on_step("run", f"pushing run {run_id} to {registry_repo}")
    ref, contents = push_run(store.run_dir(run_id), record, registry_repo, max_output_bytes=max_output_bytes,
                             on_progress=on_progress)
    return PushResult(run_id, ref, image, pushed, contents.not_carried)


def _ensure_image(engine: Engine, store: FileStore, record: RunRecord, repo: Reference,
                  on_step: Step | None) -> tuple[str | None, bool]:
    """A digest of the run's image in ``repo``'s registry: one it already holds, else one pushed now and recorded."""
    from envkit.replay import record_digests

    if not record.image.id:
        return None, False
    for digest_ref in record_digests(record):
        try:
            held = parse_reference(digest_ref, require_digest=True)
        except RegistryError:
            continue  # a digest recorded in another form (a registry on Docker Hub without a host part)
        if held.registry != repo.registry:
            continue
        with RegistryClient(held.registry) as client:
            assert held.digest is not None
            if client.has_manifest(held.repository, held.digest):
                return digest_ref, False
    if engine.find_image(record.image.id) is None:
        raise ImageNotFoundError(
            f"image {record.image.id[:19]} of run {record.run_id} is neither in {repo.registry} nor on this engine",
            hint="push from the host that ran it, or get the image here first (envkit build, or docker pull)")
    target = f"{repo.registry}/{repo.repository}"
    if on_step is not None:
        on_step("image", f"pushing image {record.image.id[:19]} to {target}")
    pushed = engine.push(record.image.id, target, "image-" + record.image.id.removeprefix("sha256:")[:12])
    # Recorded before the run is pushed, so that the artifact's record names where its image is.
    record.image.digests = list(dict.fromkeys([*record.image.digests, pushed]))
    if not record.image.digest:
        record.image.digest = pushed
    store.write(record)
    return pushed, True


def fetch(store: FileStore, source: str, *, registry_repo: str | None = None,
          on_progress: Progress | None = None) -> PulledRun:
    """Bring a run into the store from a registry: ``source`` is ``REGISTRY/REPO@sha256:...``, or a run id with
    ``registry_repo`` (found by its tag ``run-<id>``). A run the store already holds is not downloaded again.

    Raises:
        RegistryError: a malformed reference, an unreachable registry, no such run or artifact.
        InvalidRunIdError: a malformed run id. BundleError: anything altered or unsafe (nothing is installed).
    """
    if registry_repo is not None:
        if is_reference(source) and _parses(source):
            raise RegistryError(f"{source[:120]} is already a registry reference; --from goes with a run id",
                                hint="give REGISTRY/REPO@sha256:..., or RUN_ID --from REGISTRY/REPO")
        run_id = validate_run_id(source)
        return pull_run(store, resolve_run(registry_repo, run_id), expect_run_id=run_id, on_progress=on_progress)
    if is_reference(source):
        parse_reference(source, allow_tag=False, require_digest=True)
        return pull_run(store, source, on_progress=on_progress)
    run_id = validate_run_id(source)
    raise RegistryError(f"{run_id} is a run id: which registry holds it?",
                        hint=f"envkit pull {run_id} --from REGISTRY/REPO, or give REGISTRY/REPO@sha256:...")


def _parses(text: str) -> bool:
    try:
        parse_reference(text)
        return True
    except RegistryError:
        return False


def is_reference(text: str) -> bool:
    """Whether a command's argument names something in a registry (it has a registry part) rather than a run id."""
    return "/" in text
