"""The resident scheduler: each source's jobs on their cron schedules, as child processes."""
