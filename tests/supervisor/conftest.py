"""Fixtures for the supervisor's multi-process tests (defined in tests/graphrun.py, shared with
tests/security)."""

from graphrun import TEST_NODE, env, graph_file, h, marker_pids, marker_starts, up  # noqa: F401
