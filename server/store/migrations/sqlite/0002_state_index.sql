-- List pages filtered by state (`state = FAILED`) walk this index instead of scanning
-- every job of the parent in create_time order until a page fills up.
CREATE INDEX clone_jobs_parent_state_create_time
    ON clone_jobs (parent, state, create_time_us, name);
