"""docs/record.md documents every parameter of the recorder and clip nodes, and the rules
node's clock (the docs' examples themselves run in tests/test_docs_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from iotrt.nodes import NODES
from iotrt.spec import load_spec

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("kind, doc", [("recorder", "record.md"), ("clip", "record.md"),
                                       ("rules", "rules.md")])
def test_every_parameter_is_in_a_table(kind, doc):
    text = (DOCS / doc).read_text()
    section = text.split(f"kind: {kind}", 1)[-1] if kind != "rules" else text
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    params = {p.name for p in load_spec(NODES[kind]).params}
    assert params <= documented, f"{kind}: not in docs/{doc}: {params - documented}"
