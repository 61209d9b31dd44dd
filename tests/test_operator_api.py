"""The operator API's processor base types: an operator writes its per-event logic once."""
from __future__ import annotations

import pytest

from edm_runner.errors import EventError
from edm_runner.operators.api import Event, PerEventProcessor, Processor
from edm_runner.records import Record


def _events(*values: object) -> list[Event]:
    return [Event(None, v, 0, (), Record("t", 0, i, None, None, 0)) for i, v in enumerate(values)]


def test_a_processor_defines_process_or_process_one() -> None:
    with pytest.raises(TypeError, match="must define process or process_one"):
        type("Empty", (Processor,), {})


class Halve(PerEventProcessor):
    def compute(self, e: Event) -> int:
        if e.value % 2:
            raise EventError(f"odd: {e.value}")
        return e.value // 2

    def emit(self, e: Event, half: int) -> Event | None:
        e.value = half
        return e if half else None


def test_per_event_logic_gives_a_batch_path_that_changes_nothing_when_it_raises() -> None:
    step = Halve()
    assert [e.value for e in step.process(_events(4, 0, 8))] == [2, 4]
    batch = _events(4, 3, 8)
    with pytest.raises(EventError):
        step.process(batch)
    assert [e.value for e in batch] == [4, 3, 8]  # the replay sees the events as they came
    assert [e.value for e in step.process_one(batch[0])] == [2]
    assert step.process_one(_events(0)[0]) == []
