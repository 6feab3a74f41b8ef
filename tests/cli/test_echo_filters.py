"""`iotrt echo --changes` and `--skip-empty`: what counts as empty, and what counts as a change."""

from __future__ import annotations

import numpy as np

from iotrt.verbs.echo import Filter, is_empty


def test_empty_means_nothing_in_it_at_any_depth():
    for empty in (None, "", b"", [], {}, {"faces": []}, {"faces": [], "names": {}},
                  [[], {}], np.zeros((0, 4))):
        assert is_empty(empty), empty
    for full in (0, False, "x", [0], {"count": 0}, {"faces": [{"name": "owner"}]},
                 {"faces": [], "n": 1}, np.zeros(1)):
        assert not is_empty(full), full


def test_skip_empty_and_changes():
    stream = [{"faces": []}, {"faces": [{"name": "owner"}]}, {"faces": [{"name": "owner"}]},
              {"faces": []}, {"faces": [{"name": "anna"}]}, {"faces": [{"name": "owner"}]}]
    printed = lambda f: [text for text in map(f.printable, stream) if text is not None]  # noqa: E731
    assert len(printed(Filter(changes=False, skip_empty=False))) == 6
    assert printed(Filter(changes=False, skip_empty=True)) == [
        '{"faces": [{"name": "owner"}]}', '{"faces": [{"name": "owner"}]}',
        '{"faces": [{"name": "anna"}]}', '{"faces": [{"name": "owner"}]}']
    assert printed(Filter(changes=True, skip_empty=False)) == [
        '{"faces": []}', '{"faces": [{"name": "owner"}]}', '{"faces": []}',
        '{"faces": [{"name": "anna"}]}', '{"faces": [{"name": "owner"}]}']
    # both: an empty message in between does not make the same face a change
    assert printed(Filter(changes=True, skip_empty=True)) == [
        '{"faces": [{"name": "owner"}]}', '{"faces": [{"name": "anna"}]}',
        '{"faces": [{"name": "owner"}]}']
    # arrays compare by their summary: new pixels in a frame of the same shape are no change
    frames = Filter(changes=True, skip_empty=False)
    assert frames.printable(np.zeros((2, 2), np.uint8)) is not None
    assert frames.printable(np.ones((2, 2), np.uint8)) is None
