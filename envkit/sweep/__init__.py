"""Seed sweeps: the seeds, the statistics over them, the report, and the Slurm backend's core.

Imports point one way: ``seeds``, ``tdist`` and ``stats`` are pure (standard library and envkit.errors only),
``report`` uses ``stats`` (and matplotlib, lazily, for the plot), ``slurm`` talks to Slurm's command-line tools only.
None of them imports the run store or the engine: callers hand in plain values and paths.
"""
