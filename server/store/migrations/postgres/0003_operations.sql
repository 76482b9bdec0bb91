-- Long-running operations of the Google surface (server/domain/operation.py): a
-- record beside the clone job it acts on, at most one per job and verb.
CREATE TABLE operations (
    name           TEXT COLLATE "C" PRIMARY KEY,
    location       TEXT COLLATE "C" NOT NULL,
    target         TEXT COLLATE "C" NOT NULL,
    verb           TEXT   NOT NULL,
    create_time_us BIGINT NOT NULL,
    job_record     TEXT
);
CREATE UNIQUE INDEX operations_target_verb ON operations (target, verb);
CREATE INDEX operations_location_create_time ON operations (location, create_time_us, name);
