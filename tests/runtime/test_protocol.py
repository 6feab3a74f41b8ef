"""NodeConfig parsing and protocol messages: what the supervisor and nodes exchange."""

from __future__ import annotations

import json

import pytest

from iotrt.codec import DecodeError, pack
from iotrt.protocol import ConfigError, Endpoint, NodeConfig, heartbeat_msg, parse_message, ready_msg, record_body


def test_config_roundtrips_through_json():
    cfg = NodeConfig(id="cam", graph="door", kind="camera", target="iotrt.nodes.sensing.camera",
                     params={"fps": 15}, inputs={"x": Endpoint("ipc:///r/a", "up/x", 4)},
                     supervisor="ipc:///r/sup", heartbeat_s=0.5)
    again = NodeConfig.from_json(cfg.to_json())
    assert again == cfg and again.inputs["x"].queue == 4


@pytest.mark.parametrize("text,match", [
    ("{", "not valid JSON"),
    ("[]", "must be a JSON object"),
    ('{"id": "a", "colour": 1}', r"unknown fields \['colour'\]"),
    ('{"id": 3}', "'id' must be a non-empty string"),
    ('{"id": "a", "inputs": []}', "'inputs' must be an object"),
    ('{"id": "a", "inputs": {"x": {"adress": "ipc:///a"}}}', "bad endpoint in 'inputs'"),
])
def test_bad_configs_say_what_is_wrong(text, match):
    with pytest.raises(ConfigError, match=match):
        NodeConfig.from_json(text)


def test_messages_parse_and_junk_is_refused():
    assert parse_message(ready_msg("cam"))["type"] == "ready"
    hb = parse_message(heartbeat_msg("cam", {"in": {}, "out": {"image": {"msgs": 3}}}))
    assert hb["stats"]["out"]["image"]["msgs"] == 3 and isinstance(hb["pid"], int)
    rec = parse_message(pack(record_body("lock", "unlocked", {"s": 5}, t_ns=7)))
    assert (rec["kind"], rec["fields"], rec["t_ns"]) == ("unlocked", {"s": 5}, 7)
    for junk in (b"", b"\xc1", pack({"type": "hello", "id": "x"}), pack({"type": "ready"}),
                 json.dumps({"type": "ready", "id": "x"}).encode()):
        with pytest.raises(DecodeError):
            parse_message(junk)
