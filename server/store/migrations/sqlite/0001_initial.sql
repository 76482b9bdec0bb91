-- The current row of every clone job, and every revision it went through.
CREATE TABLE clone_jobs (
    name           TEXT    PRIMARY KEY,
    parent         TEXT    NOT NULL,
    request_id     TEXT,
    state          INTEGER NOT NULL,
    create_time_us INTEGER NOT NULL,
    revision       INTEGER NOT NULL,
    record         TEXT    NOT NULL
);
CREATE UNIQUE INDEX clone_jobs_request_id ON clone_jobs (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX clone_jobs_parent_create_time ON clone_jobs (parent, create_time_us, name);
CREATE INDEX clone_jobs_parent_name ON clone_jobs (parent, name);
CREATE INDEX clone_jobs_state ON clone_jobs (state);

CREATE TABLE clone_job_revisions (
    name     TEXT    NOT NULL,
    revision INTEGER NOT NULL,
    record   TEXT    NOT NULL,
    PRIMARY KEY (name, revision)
) WITHOUT ROWID;
