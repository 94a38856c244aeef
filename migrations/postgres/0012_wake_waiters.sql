-- Wake-ups in milliseconds without taxing the platform's INSERTs (issue 11).
--
-- A NOTIFY in every inserting transaction serialises their commits on
-- PostgreSQL's notify lock (measured: 16 single-row inserters fell from
-- 2,300-4,300 to 330-440 commits/s). So an idle dispatcher writes a row here
-- while it waits, and the first INSERT to find one takes it (sets it to
-- '-infinity') and notifies: at most one NOTIFY per idle period, none while
-- every dispatcher is busy. When nobody waits, an INSERT statement pays one
-- look at this table (a row per instance, on one page).
CREATE TABLE sms_waiter (
    instance text PRIMARY KEY,
    -- The row counts until then; '-infinity' once an INSERT took it. An
    -- instance that died leaves a row that stops counting by itself.
    waiting_until timestamptz NOT NULL,
    -- When the instance last wrote it; rows of instances gone for a day
    -- are swept by the others.
    marked_at timestamptz NOT NULL DEFAULT now()
);

-- The trigger sets `waiting_until` instead of deleting the row, and nothing
-- indexes it, so every write is a HOT update on the row's one page: a
-- DELETE and re-INSERT per wake-up left thousands of dead tuples for each
-- INSERT's look to scan until autovacuum came (measured: 32 pages after 10 s
-- of 180 wake-ups/s, the platform's inserts 35% slower).
--
-- SKIP LOCKED: a waiter row locked by another inserter (who is about to
-- notify) or by the dispatcher writing it never makes the platform wait.
--
-- SECURITY DEFINER: the trigger runs in the platform's transaction, often
-- as a role of its own that may only INSERT into `sms`; it reads and writes
-- `sms_waiter` with the rights of the role that ran the migrations, with
-- the search_path of that moment. And a wake-up is never worth the
-- platform's transaction: if taking the row fails anyway, the error is
-- swallowed and the dispatcher's poll finds the message.
CREATE FUNCTION sms_wake_waiters() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path FROM CURRENT AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM sms_waiter WHERE waiting_until > now()) THEN
        BEGIN
            UPDATE sms_waiter SET waiting_until = '-infinity' WHERE instance IN (
                SELECT instance FROM sms_waiter
                WHERE waiting_until > now()
                FOR UPDATE SKIP LOCKED);
            IF FOUND THEN
                PERFORM pg_notify('smsrelay_sms', '');
            END IF;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END IF;
    RETURN NULL;
END
$$;

-- Once per statement, not per row: a bulk INSERT costs the same as one row.
CREATE TRIGGER sms_wake_waiters AFTER INSERT ON sms
    FOR EACH STATEMENT EXECUTE FUNCTION sms_wake_waiters();
