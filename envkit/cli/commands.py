"""Imports every command module so that each registers itself on the app (one line per command)."""

from envkit.cli import base as _base  # noqa: F401
from envkit.cli import lock as _lock  # noqa: F401
from envkit.cli import build as _build  # noqa: F401
from envkit.cli import fingerprint as _fingerprint  # noqa: F401
from envkit.cli import runs as _runs  # noqa: F401
from envkit.cli import run as _run  # noqa: F401
from envkit.cli import replay as _replay  # noqa: F401
from envkit.cli import bundle as _bundle  # noqa: F401
from envkit.cli import doctor as _doctor  # noqa: F401
from envkit.cli import diff as _diff  # noqa: F401
from envkit.cli import remote as _remote  # noqa: F401
from envkit.cli import mlflow as _mlflow  # noqa: F401
from envkit.cli import sweep as _sweep  # noqa: F401
from envkit.cli import sweeps as _sweeps  # noqa: F401
