"""merge: events of other streams join the pipeline from this step on.

The runtime wires the merged streams' sources to this step (see ``graph.dag``); the step
itself passes events through unchanged.
"""
from __future__ import annotations

from typing import Any

from edm_runner.operators.api import PassThrough
from edm_runner.operators.common import STREAM_NAME
from edm_runner.operators.registry import Operator, register


def merged_streams(config: Any) -> list[str]:
    """The stream names a merge config brings in."""
    return [config] if isinstance(config, str) else list(config)


register(Operator(
    name="merge",
    schema={
        "oneOf": [STREAM_NAME, {"type": "array", "items": STREAM_NAME, "minItems": 1, "uniqueItems": True}],
        "description": "A stream name or a list of stream names whose events join the pipeline here.",
    },
    build=lambda step, ctx: PassThrough("merge", step.pos),
    description="Merge the events of other streams into the pipeline from this step on.",
))
