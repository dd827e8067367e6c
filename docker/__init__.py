"""Dockerfile templates and the files that go into every envkit image (package data: envkit.docker)."""
