"""Job events: a worker says "job N changed"; whoever streams that job re-reads it."""

from picscale.tiers.events.port import JobEvents, create_job_events

__all__ = ["JobEvents", "create_job_events"]
