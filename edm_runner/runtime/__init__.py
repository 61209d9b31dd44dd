"""The running microservice: compiled processors, the processing loop, commits.

Nothing is imported eagerly: ``edm validate`` and the operators never load the runtime, its
brokers (aiokafka) or its stores (lmdb). ``from edm_runner.runtime import run_services`` loads
``runtime.run`` on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edm_runner.runtime.run import run_services
    from edm_runner.runtime.stats import RunStats, ServiceStats

__all__ = ["RunStats", "ServiceStats", "run_services"]

_HOMES = {"run_services": "edm_runner.runtime.run", "RunStats": "edm_runner.runtime.stats",
          "ServiceStats": "edm_runner.runtime.stats"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
