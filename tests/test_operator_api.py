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


def test_failed_and_late_events_are_dead_lettered_in_one_place() -> None:
    """Null keys go round robin over the dead-letter partitions, as in every sink, for late
    events too (they used to all go to partition 0); keyed records to their key's partition."""
    from edm_runner.operators.api import DeadLetters, LateEvents
    from edm_runner.records.partitioner import default_partition
    from edm_runner.runtime.processing import ErrorHandler
    from edm_runner.runtime.stats import ServiceStats
    from edm_runner.language.model import ErrorPolicy, Pos

    outputs: list = []
    stats = ServiceStats()
    pos = Pos("t.yaml", 3, 5)
    late = LateEvents(stats, DeadLetters("dlq", 3, outputs), "p", pos)
    errors = ErrorHandler("svc", "p", ErrorPolicy("dead_letter", "dlq"), DeadLetters("dlq", 3, outputs), stats)
    a, b, c = _events(1, 2, 3)
    c.origin.key = b"k"
    late(a, "too late")
    late(b, "too late")
    late(c, "too late")
    errors.handle(a.origin, "map_values", pos, EventError("boom"))
    errors.handle(b.origin, "map_values", pos, EventError("boom"))
    assert [r.partition for r in outputs] == [0, 1, default_partition(b"k", 3), 0, 1]
    assert stats.late == 3 and stats.dead_lettered == 5
    names = [[name for name, _ in r.headers] for r in outputs]
    assert names[0] == names[3] == ["edm.error", "edm.error.step", "edm.source.topic", "edm.source.partition",
                                    "edm.source.offset"]
    assert dict(outputs[0].headers)["edm.error.step"] == b"p window at t.yaml:3:5"
    assert dict(outputs[3].headers)["edm.error"] == b"EventError: boom"
