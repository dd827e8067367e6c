"""Exports of envkit runs to the experiment trackers teams already use (MLflow today).

``content`` turns a run record and its run folder into what a tracker run holds (params, tags, metrics, artifact
files); it is pure and imports no tracker. ``mlflow`` writes that content through MLflow's own client, which it
imports only when an export is asked for, so envkit's start-up never pays for it.
"""
