"""Observing nodes: they watch the graph for people and other programs and never drive it."""
