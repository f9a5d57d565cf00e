"""Live jobs from the schedulers: the Slurm prolog/epilog spool, an authenticated HTTP endpoint,
Kubernetes pods; a job table the control loop plans with from the next period (``feed.JobFeed``)."""
