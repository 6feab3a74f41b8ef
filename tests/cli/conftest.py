"""Fixtures for the CLI tests against a real running graph (defined in tests/graphrun.py)."""

from graphrun import env, h, up  # noqa: F401
