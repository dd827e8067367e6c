"""Where envkit's MLflow exports go: the command line, else ``$MLFLOW_TRACKING_URI``, else the project's configuration.

The project configuration owns one key, ``mlflow`` (registered with :func:`envkit.project.register_key`): either the
tracking URI alone, or a table::

    [tool.envkit]
    mlflow = "http://127.0.0.1:5000"

    # or
    [tool.envkit.mlflow]
    tracking_uri = "http://127.0.0.1:5000"
    experiment = "resnet"          # default: the project folder's name
    artifact_limit = "64M"         # outputs and logs larger than this stay in the run folder

Cheap to import (no MLflow, no workflow): every command that may read the project's configuration imports it, so
that the key is known wherever the configuration is read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from envkit import project
from envkit.errors import ProjectConfigError, TrackerError
from envkit.sizes import parse_size

KEY = "mlflow"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
INSTALL_HINT = "pip install 'envkit[mlflow]'  (or: pip install mlflow-skinny)"
DEFAULT_ARTIFACT_LIMIT = 64 << 20  # per output file; larger outputs stay in the run folder, with a note
_SERVER_SCHEMES = ("http", "https", "databricks")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*|databricks")
_TABLE_KEYS = {"tracking_uri": str, "experiment": str, "artifact_limit": (str, int)}

project.register_key(KEY, (str, dict))


@dataclass(frozen=True)
class Tracking:
    """Where exports go. ``tracking_uri`` is None when nothing configures a tracker."""

    tracking_uri: str | None
    experiment: str
    artifact_limit: int = DEFAULT_ARTIFACT_LIMIT
    source: str | None = None  # where the URI came from, for messages


def tracking(uri: str | None = None, experiment: str | None = None, artifact_limit: int | None = None,
             root: Path | None = None) -> Tracking:
    """The tracker for this project: each setting from the arguments, else the environment (the URI only), else the
    project's configuration, else the default (no URI; the project folder's name; 64 MiB).

    Args:
        uri, experiment, artifact_limit: what the command line gave (None: not given).
        root: the project folder (default: found upward from the current folder).

    Raises:
        ProjectConfigError: the configuration is malformed (the ``mlflow`` key included).
    """
    config = project.load_config(root)
    table = _table(config)
    source = "the command line" if uri else None
    if not uri and os.environ.get(ENV_TRACKING_URI):
        uri, source = os.environ[ENV_TRACKING_URI], f"${ENV_TRACKING_URI}"
    if not uri and table.get("tracking_uri"):
        uri, source = table["tracking_uri"], _where(config)
    if artifact_limit is None:
        artifact_limit = table.get("artifact_limit", DEFAULT_ARTIFACT_LIMIT)
    return Tracking(uri, experiment or table.get("experiment") or config.root.name, artifact_limit, source)


def default_experiment() -> str:
    """The experiment of exports that name none: the project's setting, else the project folder's name."""
    return tracking().experiment


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The tracking URI given, else ``$MLFLOW_TRACKING_URI``: a tracking server's ``http(s)://`` URI (or
    ``databricks``).

    Database and folder URIs (``sqlite:///mlflow.db``, ``./mlruns``) are refused: MLflow's client opens those
    itself, retrying a bad one for 100 seconds with no setting to bound it, and creates folders on the way. Serve
    them with ``mlflow server`` instead.

    Raises:
        TrackerError: when neither is set, or the URI is not a server's.
    """
    uri = tracking_uri or os.environ.get(ENV_TRACKING_URI)
    if not uri:
        raise TrackerError("no MLflow tracking URI given",
                           hint=f"pass --mlflow URI (envkit mlflow export: --tracking-uri URI), set "
                                f"{ENV_TRACKING_URI}, or set mlflow = \"http://HOST:PORT\" in the project's "
                                "[tool.envkit]")
    scheme = uri.partition(":")[0].lower() if ":" in uri else ""
    if scheme not in _SERVER_SCHEMES:
        shown = uri if len(uri) <= 80 else uri[:77] + "..."
        raise TrackerError(f"{shown!r} is not the URI of an MLflow tracking server",
                           hint="envkit exports to a tracking server: http://HOST:PORT (for a local database, serve "
                                "it: mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1)")
    return uri


def preflight(settings: Tracking) -> str:
    """Check, before a run or replay starts, that its export can be tried: a server's URI is configured and MLflow's
    client is installed (found, not imported: importing it takes seconds). Returns the URI.

    Raises:
        TrackerError: no URI, not a server's URI, or no MLflow client.
    """
    import importlib.util

    uri = resolve_tracking_uri(settings.tracking_uri)
    if importlib.util.find_spec("mlflow") is None:
        raise TrackerError("MLflow export needs MLflow's client, which is not installed", hint=INSTALL_HINT)
    return uri


MLFLOW_OPTION_HELP = ("Export to MLflow when done; URI default: $MLFLOW_TRACKING_URI, then the project's mlflow "
                      "setting. Tracker trouble is one warning, never the exit code.")


def looks_like_tracking_uri(text: str) -> bool:
    """Whether a word after ``--mlflow`` is its URI (``scheme://...`` or ``databricks``) rather than the script."""
    return _URI.fullmatch(text) is not None


def _table(config: project.ProjectConfig) -> dict:
    given = config.extra.get(KEY)
    if given is None:
        return {}
    if isinstance(given, str):
        given = {"tracking_uri": given}
    where = _where(config)
    unknown = sorted(set(given) - set(_TABLE_KEYS))
    if unknown:
        raise ProjectConfigError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in "
                                 f"{KEY}", hint=f"known keys: {', '.join(_TABLE_KEYS)}")
    out = {}
    for key, value in given.items():
        kinds = _TABLE_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, kinds) or value == "":
            raise ProjectConfigError(f"{where}: {KEY}.{key} = {value!r:.60} is not "
                                     + ("a size (64M, or a number of bytes)" if key == "artifact_limit"
                                        else "a non-empty string"))
        if key == "artifact_limit":
            try:
                value = parse_size(value) if isinstance(value, str) else value
            except ValueError as exc:
                raise ProjectConfigError(f"{where}: {KEY}.artifact_limit: {exc}") from None
            if value < 0:
                raise ProjectConfigError(f"{where}: {KEY}.artifact_limit must not be negative")
        out[key] = value
    return out


def _where(config: project.ProjectConfig) -> str:
    if config.source is None:
        return "the project configuration"
    return config.source.name + (" [tool.envkit]" if config.source.name == project.PYPROJECT else "")


