"""The node <-> supervisor protocol (node side here; the supervisor implements the other side).

Launch
    The supervisor execs ``[sys.executable, "-m", "iotrt.launch"]`` with cwd = the graph file's
    folder and the node's `NodeConfig` as JSON in the env var ``IOTRT_NODE_CONFIG``::

        {"graph": "door", "id": "cam", "kind": "camera" | null,
         "target": "iotrt.nodes.sensing.camera" | "pkg.mod:func" | "/abs/path/user_node.py",
         "params": {...already validated and defaulted...},
         "inputs":  {"image": {"address": "ipc:///run/iotrt/door/ab12cd34",
                               "topic": "cam/image", "queue": 2}},
         "outputs": {"image": {"address": "ipc://...", "topic": "cam/image"}},
         "commands_in":  {"commands": {"address": "ipc://..."}},
         "commands_out": {"lock": {"address": "ipc://..."}},
         "supervisor": "ipc://.../sup" | null,      # the supervisor's Pull0; nodes Push0-dial
         "journal": "ipc://.../journal" | null,     # a command-channel server in the supervisor
         "heartbeat_s": 1.0, "runtime_dir": "...", "state_dir": "...", "log_level": "INFO"}

    A target that is a module path runs ``module.main(node)``; ``module:function`` runs
    ``function(node)``; a ``.py`` path is run as a script whose ``Node()`` reads the same env.
    ``Node()`` with no env var runs standalone (no supervisor, no sockets unless given).
    Also in the env: ``IOTRT_SUPERVISOR_PID`` (launch sets PR_SET_PDEATHSIG=SIGKILL, then exits
    at once if its parent is no longer that pid), and the thread-pool sizes the supervisor
    chose (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, IOTRT_THREADS; the node
    applies cv2.setNumThreads(IOTRT_THREADS)).

Node -> supervisor (msgpack maps over Push0 -> the supervisor's Pull0)
    ``{"type": "ready", "id", "pid"}`` once, after start-up (model loading etc.): sent by
    ``node.ready()``, or implicitly when the node first iterates its event loop. The
    supervisor applies a start-up timeout until then, and heartbeat liveness after.
    ``{"type": "heartbeat", "id", "pid", "stats": {"in": {name: {"msgs", "drops", "bad"}},
    "out": {name: {"msgs"}}}}`` every `heartbeat_s`, sent from inside the event loop, so a node
    stuck in its own code stops heartbeating and gets restarted.
    ``{"type": "deadline", "id", "pid", "in_s": float | null}``, sent as a command on the
    "journal" channel (acknowledged): a safety-critical node (SPEC ``safety=True``) will have
    ended its safety action within ``in_s`` seconds (null: it has); past that plus a short grace
    the supervisor SIGKILLs the process (``node.safety_deadline``).
    ``{"type": "done", "id", "pid"}``, also on the "journal" channel (acknowledged): a node of a
    process group returned by itself (nothing left to do); its process runs on for the others,
    and the supervisor stops expecting its heartbeats.
    ``{"type": "record", "id", "kind", "fields": {...}, "t_ns"}``: a journal event
    (``node.record()``). With ``sync=True`` the record is instead sent as a command
    (data = the same map) on the "journal" command channel, and ``node.record`` returns once
    the supervisor has acknowledged writing it.

Stop
    SIGTERM or SIGINT sets the stop flag; the event iterator ends; the node closes its sockets
    and exits 0. The supervisor waits a grace period, then SIGKILLs.
Reload
    SIGHUP is delivered to the node as an event with ``kind == "reload"``.
Schema without running
    ``iotrt.node.load_spec(target) -> NodeSpec`` imports the module (or reads a script's
    top-level SPEC) without calling main.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pynng

from iotrt import errors
from iotrt.codec import DecodeError, pack, unpack
from iotrt.config import ENV_CONFIG, ENV_SUPERVISOR_PID, ENV_THREADS  # noqa: F401 - the protocol's names

log = logging.getLogger("iotrt.protocol")

MESSAGE_TYPES = ("ready", "heartbeat", "record")
MAX_DEADLINE_S = 86400.0


class ConfigError(errors.ConfigError, ValueError):
    """IOTRT_NODE_CONFIG is missing a field or has a wrong one."""


@dataclass(slots=True)
class Endpoint:
    address: str
    topic: str = ""
    queue: int = 2
    local: bool = False   # an input whose publisher runs in the same process (iotrt.local)


@dataclass(slots=True)
class NodeConfig:
    id: str
    graph: str = ""
    kind: str | None = None
    target: str = ""
    params: dict = field(default_factory=dict)
    inputs: dict[str, Endpoint] = field(default_factory=dict)
    outputs: dict[str, Endpoint] = field(default_factory=dict)
    commands_in: dict[str, Endpoint] = field(default_factory=dict)
    commands_out: dict[str, Endpoint] = field(default_factory=dict)
    supervisor: str | None = None
    journal: str | None = None
    heartbeat_s: float = 1.0
    runtime_dir: str = ""
    state_dir: str = ""
    log_level: str = "INFO"

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_CONFIG} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{ENV_CONFIG} must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{ENV_CONFIG}: unknown fields {unknown}")
        if not isinstance(raw.get("id"), str) or not raw["id"]:
            raise ConfigError(f"{ENV_CONFIG}: 'id' must be a non-empty string")
        for group in ("inputs", "outputs", "commands_in", "commands_out"):
            ports = raw.get(group)
            ports = {} if ports is None else ports
            if not isinstance(ports, dict):
                raise ConfigError(f"{ENV_CONFIG}: '{group}' must be an object")
            try:
                raw[group] = {name: Endpoint(**ep) for name, ep in ports.items()}
            except TypeError as exc:
                raise ConfigError(f"{ENV_CONFIG}: bad endpoint in '{group}': {exc}") from exc
        return cls(**raw)

    @classmethod
    def from_env(cls) -> NodeConfig | None:
        """This node's config: the one `iotrt.launch` gave this thread (a node of a process
        group), else the environment's."""
        config = getattr(_this_thread, "config", None)
        if config is not None:
            return config
        text = os.environ.get(ENV_CONFIG)
        return None if text is None else cls.from_json(text)

    def bind_to_thread(self, started: list | None = None) -> None:
        """`Node()` in this thread reads this config (a script node in a process group), and
        is appended to `started` (so the group can stop it)."""
        _this_thread.config = self
        _this_thread.started = started

    def to_json(self) -> str:
        return json.dumps(asdict(self))


_this_thread = threading.local()


def node_created(node: object) -> None:
    """Called by every Node: a process group's thread collects the Node it runs."""
    started = getattr(_this_thread, "started", None)
    if started is not None:
        started.append(node)


def process_configs(text: str) -> tuple[str, list[NodeConfig]]:
    """IOTRT_NODE_CONFIG -> (process name, node configs): a single node's config object, or a
    process group's {"process": name, "nodes": [config, ...]}."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ENV_CONFIG} is not valid JSON: {exc}") from exc
    if isinstance(raw, dict) and "nodes" in raw and "process" in raw:
        nodes = raw["nodes"]
        if not (isinstance(nodes, list) and nodes and isinstance(raw["process"], str)):
            raise ConfigError(f"{ENV_CONFIG}: a process group needs 'process' and 'nodes'")
        return raw["process"], [NodeConfig.from_json(json.dumps(n)) for n in nodes]
    config = NodeConfig.from_json(text)
    return config.id, [config]


# -- messages (the supervisor parses them with parse_message) --------------------------------

def ready_msg(node_id: str) -> bytes:
    return pack({"type": "ready", "id": node_id, "pid": os.getpid()})


def heartbeat_msg(node_id: str, stats: dict) -> bytes:
    return pack({"type": "heartbeat", "id": node_id, "pid": os.getpid(), "stats": stats})


# A record's fields as the journal keeps them: at most MAX_RECORD_BYTES of JSON, a larger value
# replaced by a summary (its type, size and first characters). The node fits them before it
# sends a record, so that a record always fits its channel (MAX_CONTROL_MESSAGE, and the
# journal's command channel) however large a value a node records; the journal fits what it
# is sent again (it must not trust the sender).
MAX_RECORD_BYTES = 16 * 1024
SUMMARY_HEAD = 200        # characters of a summarised value that are kept


def json_default(obj: Any) -> Any:
    """What the journal stores for a value JSON cannot hold: records come from user nodes, and
    a readable form beats refusing the event (losing a journal entry is worse than a
    stringified field)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if hasattr(obj, "tolist"):  # numpy scalars and small arrays
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def summarise(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` within MAX_RECORD_BYTES of JSON: each large value replaced by a summary."""
    out: dict[str, Any] = {}
    budget = MAX_RECORD_BYTES - 1024   # room for the keys and the marker
    for key, value in fields.items():
        text = json.dumps(value, default=json_default, separators=(",", ":"))
        if len(text) > SUMMARY_HEAD or len(text) > budget:
            value = {"summarised": type(value).__name__, "json_chars": len(text),
                     "head": text[:SUMMARY_HEAD]}
        out[str(key)[:SUMMARY_HEAD]] = value
        budget -= len(json.dumps(value, default=json_default, separators=(",", ":"))) \
            + len(str(key)[:SUMMARY_HEAD])
        if budget <= 0:
            out["summarised_keys"] = len(fields)   # only the first keys fit
            break
    return out


def fit_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` as they are if the journal would store them whole, else `summarise(fields)`.
    Fields JSON cannot hold at all (a cycle) are left as they are: the journal refuses them."""
    try:
        text = json.dumps(fields, default=json_default, separators=(",", ":"),
                          ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return fields
    return fields if len(text) <= MAX_RECORD_BYTES else summarise(fields)


def record_body(node_id: str, kind: str, fields: dict, t_ns: int | None = None) -> dict:
    return {"type": "record", "id": node_id, "kind": kind, "fields": fit_fields(fields),
            "t_ns": time.time_ns() if t_ns is None else t_ns}


def done_body(node_id: str) -> dict:
    return {"type": "done", "id": node_id, "pid": os.getpid()}


def deadline_body(node_id: str, in_s: float | None) -> dict:
    return {"type": "deadline", "id": node_id, "pid": os.getpid(), "in_s": in_s}


def deadline_in_s(body: dict) -> float | None:
    """Supervisor side: the checked `in_s` of a deadline body; ValueError if it is not a
    finite number of seconds in [0, MAX_DEADLINE_S] or null."""
    in_s = body.get("in_s")
    if in_s is None:
        return None
    if isinstance(in_s, bool) or not isinstance(in_s, (int, float)) or not 0 <= in_s <= MAX_DEADLINE_S:
        raise ValueError(f"in_s must be null or a number of seconds from 0 to {MAX_DEADLINE_S:g}")
    return float(in_s)


# The most a node's message to the supervisor or a control request may take on the wire (set as
# the receiving socket's recv_max_size; a command's is command.MAX_REQUEST_BYTES): heartbeats
# are small, records are fitted (`fit_fields`), and a larger message only costs the receiver
# (decoding can take 70x its size in memory).
MAX_CONTROL_MESSAGE = 1 << 20


def parse_message(buf: bytes) -> dict:
    """Supervisor side: bytes from a node -> message map; DecodeError if malformed."""
    msg = unpack(buf)
    if not (isinstance(msg, dict) and msg.get("type") in MESSAGE_TYPES
            and isinstance(msg.get("id"), str)):
        raise DecodeError(f"not a node protocol message: a {type(msg).__name__} "
                          f"of {len(buf)} bytes")   # not its repr: that can take seconds
    return msg


class SupervisorLink:
    """The node's Push0 to the supervisor; a no-op when running standalone."""

    def __init__(self, node_id: str, address: str | None):
        self.node_id = node_id
        self._sock = None
        self.dropped = 0
        if address:
            # messages queue here until the supervisor is connected (start-up race); sends
            # never block, so a busy supervisor can never stall the node's loop
            self._sock = pynng.Push0(send_buffer_size=256)
            self._sock.dial(address, block=False)
        self.ready_sent = False

    def _send(self, buf: bytes) -> bool:
        """False when there is no supervisor; a full queue drops the message (and says so)."""
        if self._sock is None:
            return False
        try:
            self._sock.send(buf, block=False)
        except pynng.TryAgain:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 10_000 == 0:
                log.warning("supervisor not reading: %d messages dropped (use "
                            "node.record(..., sync=True) for records that must not be lost)",
                            self.dropped)
        return True

    def ready(self) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self._send(ready_msg(self.node_id))

    def heartbeat(self, stats: dict) -> None:
        self._send(heartbeat_msg(self.node_id, stats))

    def record(self, body: dict) -> bool:
        buf = pack(body)
        if len(buf) > MAX_CONTROL_MESSAGE:   # the supervisor would drop it, and the link with it
            log.warning("record %.80r of %d bytes not sent: a record takes at most %d (its "
                        "fields are summarised; is its kind that long?)", body["kind"], len(buf),
                        MAX_CONTROL_MESSAGE)
            return True
        return self._send(buf)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
