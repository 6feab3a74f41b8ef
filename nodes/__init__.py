"""Built-in nodes: sensing -> perception -> action."""
