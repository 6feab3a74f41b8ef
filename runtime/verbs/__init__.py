"""One module per `iotrt` verb; each defines `add_arguments(parser)` and `run(args) -> int`.

The registry of verbs is the explicit dict `iotrt.cli.VERBS`.
"""
