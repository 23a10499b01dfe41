"""Job events: a worker says "job N changed"; whoever streams that job re-reads it."""

from picscale.tiers.events.factory import create_job_events
from picscale.tiers.events.port import JobEvents

__all__ = ["JobEvents", "create_job_events"]
