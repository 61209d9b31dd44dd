"""What pipelines read and write, as validation extracted it: the input of the cycle checks and
of the business topology's cross-service checks."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Ref:
    """A use of a stream at ``path`` in the file; ``topic`` is the stream's topic."""

    stream: str
    topic: str
    path: tuple


@dataclass
class Flow:
    """What one pipeline reads (``from``, merge, joined streams, tables whose changes it
    processes) and writes (sinks, repartition targets). ``dead_letters`` are written too, but
    only on failures: they are not part of cycles."""

    pipeline: str
    reads: list[Ref] = field(default_factory=list)
    writes: list[Ref] = field(default_factory=list)
    dead_letters: list[Ref] = field(default_factory=list)
