"""Everything that runs inside a job's image: the seeding bootstrap, step traces, portable ops, probes.

Standard library only at import time (torch and numpy are handed in or imported where a job already has them), and
Python 3.9 syntax: the package is copied into every image as ``envkit_injob`` and runs under the image's Python,
without envkit installed. A unit test proves both. Modules refer to each other relatively, so the same files work as
``envkit.injob`` on a host and as ``envkit_injob`` in an image.
"""
