"""Fixtures of the lifecycle-event tests: a real webhook subscriber on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.functional.events.subscriber import Subscriber, running_subscriber


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    yield from running_subscriber()
