-- Long-running operations of the Google surface (server/domain/operation.py): a
-- record beside the clone job it acts on, at most one per job and verb.
CREATE TABLE operations (
    name           TEXT    PRIMARY KEY,
    location       TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    verb           TEXT    NOT NULL,
    create_time_us INTEGER NOT NULL,
    job_record     TEXT
);
CREATE UNIQUE INDEX operations_target_verb ON operations (target, verb);
CREATE INDEX operations_location_create_time ON operations (location, create_time_us, name);
