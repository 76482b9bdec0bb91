-- The change feed: every new revision of a job is announced on the channel
-- clonejob_changes as "<revision> <claimable 0|1> <name>", delivered when the
-- transaction commits. Claimable: the job may need a worker (PENDING 1, or
-- CANCELLING 6). Lease changes write no revision and so announce nothing here;
-- a release announces itself.
CREATE FUNCTION clone_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'clonejob_changes',
        NEW.revision::text
            || CASE WHEN NEW.state IN (1, 6) THEN ' 1 ' ELSE ' 0 ' END
            || NEW.name
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER clone_jobs_notify_insert
    AFTER INSERT ON clone_jobs
    FOR EACH ROW EXECUTE FUNCTION clone_jobs_notify();

CREATE TRIGGER clone_jobs_notify_update
    AFTER UPDATE ON clone_jobs
    FOR EACH ROW WHEN (OLD.revision IS DISTINCT FROM NEW.revision)
    EXECUTE FUNCTION clone_jobs_notify();
