"""The running microservice: compiled processors, the processing loop, commits."""
from edm_runner.runtime.event import Event
from edm_runner.runtime.run import run_services
from edm_runner.runtime.stats import RunStats, ServiceStats

__all__ = ["Event", "RunStats", "ServiceStats", "run_services"]
