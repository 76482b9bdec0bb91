-- The current row of every clone job, and every revision it went through.
-- Names sort by code point (COLLATE "C"), as in SQLite, so that list order and
-- page cursors do not depend on the database's locale.
CREATE TABLE clone_jobs (
    name           TEXT COLLATE "C" PRIMARY KEY,
    parent         TEXT COLLATE "C" NOT NULL,
    request_id     TEXT,
    state          INTEGER NOT NULL,
    create_time_us BIGINT  NOT NULL,
    revision       BIGINT  NOT NULL,
    record         TEXT    NOT NULL,
    -- The lease: who runs the job, until when (the database's clock), and the
    -- fencing epoch that grows with each claim (the first claim's is 1).
    lease_owner    TEXT,
    lease_epoch    BIGINT  NOT NULL DEFAULT 0,
    lease_expires  TIMESTAMPTZ
);
CREATE UNIQUE INDEX clone_jobs_request_id ON clone_jobs (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX clone_jobs_parent_create_time ON clone_jobs (parent, create_time_us, name);
CREATE INDEX clone_jobs_parent_name ON clone_jobs (parent, name);
CREATE INDEX clone_jobs_parent_state_create_time
    ON clone_jobs (parent, state, create_time_us, name);
CREATE INDEX clone_jobs_state ON clone_jobs (state);
-- A claim walks the unfinished jobs oldest first (PENDING 1, ACTIVE 2,
-- CANCELLING 6, ADAPTING_OS 7), never the finished ones that pile up over time.
CREATE INDEX clone_jobs_claim ON clone_jobs (create_time_us, name)
    WHERE state IN (1, 2, 6, 7);

CREATE TABLE clone_job_revisions (
    name     TEXT COLLATE "C" NOT NULL,
    revision BIGINT NOT NULL,
    record   TEXT   NOT NULL,
    PRIMARY KEY (name, revision)
);

-- Values every server on this database must agree on (the page-token key).
CREATE TABLE settings (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);
