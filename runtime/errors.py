"""The one family of errors iotrt reports to a user.

Every error a user can cause or fix (a bad graph, a graph that is not running, a corrupt
journal, a model that does not compile) is an `IotrtError`: its message (`str(exc)`) is written
for the user (what is wrong, where: file:line or node id, and what to do), and `exit_code` is
what the command line exits with. `iotrt.cli` prints the message and maps the code in one
place; the verbs raise and never print errors themselves. Subclasses by area let callers catch
what they can handle. A module's own error class subclasses its area (and, where it always
did, a built-in such as ValueError, so existing `except ValueError` keeps working).

This module imports nothing: it sits below every other layer.
"""

from __future__ import annotations


class IotrtError(Exception):
    """Base of the family. `str(exc)` is the user-facing message."""

    exit_code = 1


class UsageError(IotrtError):
    """A command line the verb cannot act on (missing or contradictory arguments)."""

    exit_code = 2


class ConfigError(IotrtError):
    """Something a user wrote is wrong: a graph, a node's SPEC or params, a rules file."""


class TransportError(IotrtError):
    """Messages, addresses and commands between processes (codec, bus, command channel)."""


class SupervisionError(IotrtError):
    """Running a graph, or talking to a running one (supervisor, control socket, runtime
    folders, node processes)."""


class StorageError(IotrtError):
    """Files iotrt keeps: the journal, recordings, compiled artifacts, galleries."""


class ModelError(IotrtError):
    """Compiling a model or running it on an engine backend."""


class DeviceError(IotrtError):
    """A sensor or actuator's hardware or driver."""
