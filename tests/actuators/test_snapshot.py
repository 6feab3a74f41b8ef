"""Snapshot actuator: the newest frame lands on disk as a JPEG, journaled, with retention."""

import cv2
import numpy as np

from iotrt.node import Node
from iotrt.nodes.action import snapshot


def _frame(value: int) -> np.ndarray:
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:, :, 0] = value          # red channel, so a BGR/RGB mix-up shows
    return frame


def test_snapshot_saves_the_newest_frame_and_journals_it(tmp_path):
    node = Node.for_test(snapshot, params={"dir": str(tmp_path), "keep": 2})
    node.feed("image", _frame(50)).feed("image", _frame(200))
    node.feed_command("commands", {"reason": "visitor at door!"})
    node.run()

    ack = node.acks[0]
    assert ack["ok"], ack
    path = tmp_path / ack["path"].rsplit("/", 1)[-1]
    assert path.name.endswith("-visitor_at_door_.jpg")
    saved = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert abs(int(saved[..., 0].mean()) - 200) <= 3      # the newest frame, red kept red
    assert int(saved[..., 2].mean()) <= 3
    kinds = [kind for kind, _ in node.records]
    assert kinds == ["command_received", "command_applied"]
    assert node.records[1][1]["result"]["path"] == ack["path"]


def test_snapshot_keeps_at_most_keep_files(tmp_path):
    node = Node.for_test(snapshot, params={"dir": str(tmp_path), "keep": 2})
    node.feed("image", _frame(10))
    for i in range(4):
        node.feed_command("commands", {"reason": f"r{i}"})
    node.run()
    assert all(a["ok"] for a in node.acks)
    names = sorted(p.name for p in tmp_path.glob("*.jpg"))
    assert len(names) == 2 and names[-1].endswith("-r3.jpg")


def test_snapshot_without_a_frame_is_refused_not_crashed(tmp_path):
    node = Node.for_test(snapshot, params={"dir": str(tmp_path)})
    node.feed_command("commands", {"reason": "visitor"})
    node.run()
    assert node.acks[0]["ok"] is False
    assert "no camera frame" in node.acks[0]["error"]
    assert [kind for kind, _ in node.records] == ["command_received", "command_refused"]
    assert not list(tmp_path.iterdir())
