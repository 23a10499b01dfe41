"""The job queue: the lease table embedded, a broker when scaled out."""

from picscale.tiers.queue.port import ClaimedJob, JobQueue, NewJob, create_job_queue

__all__ = ["ClaimedJob", "JobQueue", "NewJob", "create_job_queue"]
