"""Job workers: claim jobs from the queue port and run them."""

from picscale.worker.runner import Worker, run_worker

__all__ = ["Worker", "run_worker"]
