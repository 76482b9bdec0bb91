-- Leases: which worker runs a job, until when (unix seconds of this process's
-- clock; SQLite serves one process), and the fencing epoch that grows with each
-- claim. A new job's epoch is 0, so the first claim's is 1.
ALTER TABLE clone_jobs ADD COLUMN lease_owner TEXT;
ALTER TABLE clone_jobs ADD COLUMN lease_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE clone_jobs ADD COLUMN lease_expires REAL;

-- A claim walks the unfinished jobs oldest first (PENDING 1, ACTIVE 2,
-- CANCELLING 6, ADAPTING_OS 7), never the finished ones that pile up over time.
CREATE INDEX clone_jobs_claim ON clone_jobs (create_time_us, name)
    WHERE state IN (1, 2, 6, 7);
