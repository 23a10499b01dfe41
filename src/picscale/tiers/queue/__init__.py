"""The job queue: the lease table embedded, a broker when scaled out."""

from picscale.tiers.queue.factory import create_job_queue
from picscale.tiers.queue.port import ClaimedJob, DeadJob, JobQueue, JobState, NewJob

__all__ = ["ClaimedJob", "DeadJob", "JobQueue", "JobState", "NewJob", "create_job_queue"]
