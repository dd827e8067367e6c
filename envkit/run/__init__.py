"""The host side of a job. Importing it registers the project-configuration keys other parts of envkit own
(``ignore_lines``, :mod:`envkit.stdoutcompare`), so that every reader of the configuration below it (the run's
defaults, the environment resolver of ``envkit build`` and ``envkit run``) accepts them."""

from envkit import _forward_calls
from envkit import stdoutcompare as _stdoutcompare  # noqa: F401 - registers its configuration key

_forward_calls(__name__)  # `envkit.run(...)` stays the API's function once this package is loaded
