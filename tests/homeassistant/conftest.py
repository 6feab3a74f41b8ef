"""Fixtures: a real mosquitto per test, and a Home Assistant stand-in reading it."""

from __future__ import annotations

import pytest
from hassim import Broker, HomeAssistant


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    b.kill()


@pytest.fixture
def homeassistant(broker):
    ha = HomeAssistant(broker.port)
    yield ha
    ha.close()
