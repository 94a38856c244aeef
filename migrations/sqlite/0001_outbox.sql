-- The SMS outbox on SQLite: the same tables, columns, states, constraints and
-- transition rules as migrations/postgres, in this dialect. Where SQLite forces
-- a different shape, a comment says why.
--
-- Times are INTEGER milliseconds since the Unix epoch (UTC). SQLite has no
-- timestamp type: text such as '2026-11-27T10:00:00Z' would compare as text,
-- not as time, so the CHECKs below refuse anything but integers. The default
-- is written with julianday() rather than unixepoch('subsec') so that the
-- schema also works from sqlite3 shells older than 3.42.
--
-- Tables are not STRICT (that would make the file unreadable for sqlite3
-- older than 3.37); the typeof() CHECKs give the same protection with a named
-- error instead.

CREATE TABLE sms (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id           INTEGER,
    staff_id            INTEGER,
    -- The number as it was when the message was created (traceability).
    mobile_no           TEXT    NOT NULL,
    message             TEXT    NOT NULL,
    status              TEXT    NOT NULL DEFAULT 'pending',
    created_at          INTEGER NOT NULL DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    -- Optional: do not send before / never send after (epoch milliseconds).
    not_before          INTEGER,
    expires_at          INTEGER,

    -- Owned by smsrelay.
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER,
    -- When the row is due: a stored column so the claim query can walk one index.
    due_at              INTEGER GENERATED ALWAYS AS (COALESCE(next_attempt_at, not_before, created_at)) STORED,
    locked_by           TEXT,
    lease_expires_at    INTEGER,
    sent_at             INTEGER,
    delivered_at        INTEGER,
    provider_message_id TEXT,
    last_error          TEXT,
    segments            INTEGER,
    updated_at          INTEGER NOT NULL DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    -- Set by POST /sms when the caller sends an Idempotency-Key header.
    idempotency_key     TEXT,

    CONSTRAINT sms_one_recipient CHECK ((client_id IS NULL) <> (staff_id IS NULL)),
    CONSTRAINT sms_status_known CHECK (status IN
        ('pending', 'sending', 'sent', 'delivered', 'undelivered', 'declined', 'failed')),
    CONSTRAINT sms_attempts_non_negative CHECK (attempts >= 0),
    -- A lease exists exactly while a row is `sending`.
    CONSTRAINT sms_lease_while_sending CHECK (
        (status = 'sending') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- SQLite only: every time is epoch milliseconds (see the top of this file).
    CONSTRAINT sms_times_are_epoch_ms CHECK (
        typeof(created_at) = 'integer' AND typeof(updated_at) = 'integer'
        AND typeof(not_before) IN ('integer', 'null') AND typeof(expires_at) IN ('integer', 'null')
        AND typeof(next_attempt_at) IN ('integer', 'null')
        AND typeof(lease_expires_at) IN ('integer', 'null')
        AND typeof(sent_at) IN ('integer', 'null') AND typeof(delivered_at) IN ('integer', 'null'))
);

-- Claim: due pending rows in due order. Partial, so millions of finished rows cost nothing.
CREATE INDEX sms_due_idx ON sms (due_at, id) WHERE status = 'pending';
-- Expiry sweep before each claim.
CREATE INDEX sms_expiry_idx ON sms (expires_at) WHERE status = 'pending' AND expires_at IS NOT NULL;
-- Lease reaper.
CREATE INDEX sms_lease_idx ON sms (lease_expires_at) WHERE status = 'sending';
-- Screens and operators: a client's or staff member's messages, by status, by date.
CREATE INDEX sms_client_idx ON sms (client_id, id) WHERE client_id IS NOT NULL;
CREATE INDEX sms_staff_idx ON sms (staff_id, id) WHERE staff_id IS NOT NULL;
CREATE INDEX sms_status_idx ON sms (status, id);
CREATE INDEX sms_created_idx ON sms (created_at, id);
-- A retried POST /sms finds its first row.
CREATE UNIQUE INDEX sms_idempotency_idx ON sms (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Delivery reports find their message by the provider's id.
CREATE INDEX sms_provider_message_idx ON sms (provider_message_id) WHERE provider_message_id IS NOT NULL;

-- The state machine, enforced by the database as well as by the code
-- (src/domain/status.rs holds the same graph). The WHEN clause lists the
-- allowed moves; the CASE only picks the message, one literal per refused
-- move, because RAISE() takes nothing but a literal before SQLite 3.47.
CREATE TRIGGER sms_transition BEFORE UPDATE OF status ON sms FOR EACH ROW
WHEN NEW.status IS NOT OLD.status AND (OLD.status, NEW.status) NOT IN (
    VALUES
    ('pending', 'sending'),
    ('pending', 'failed'),
    ('sending', 'sent'),
    ('sending', 'pending'),
    ('sending', 'declined'),
    ('sending', 'failed'),
    ('sent', 'delivered'),
    ('sent', 'undelivered')
)
BEGIN
    SELECT CASE OLD.status || ' -> ' || NEW.status
        WHEN 'pending -> sent' THEN RAISE(ABORT, 'status transition pending -> sent is not allowed')
        WHEN 'pending -> delivered' THEN RAISE(ABORT, 'status transition pending -> delivered is not allowed')
        WHEN 'pending -> undelivered' THEN RAISE(ABORT, 'status transition pending -> undelivered is not allowed')
        WHEN 'pending -> declined' THEN RAISE(ABORT, 'status transition pending -> declined is not allowed')
        WHEN 'sending -> delivered' THEN RAISE(ABORT, 'status transition sending -> delivered is not allowed')
        WHEN 'sending -> undelivered' THEN RAISE(ABORT, 'status transition sending -> undelivered is not allowed')
        WHEN 'sent -> pending' THEN RAISE(ABORT, 'status transition sent -> pending is not allowed')
        WHEN 'sent -> sending' THEN RAISE(ABORT, 'status transition sent -> sending is not allowed')
        WHEN 'sent -> declined' THEN RAISE(ABORT, 'status transition sent -> declined is not allowed')
        WHEN 'sent -> failed' THEN RAISE(ABORT, 'status transition sent -> failed is not allowed')
        WHEN 'delivered -> pending' THEN RAISE(ABORT, 'status transition delivered -> pending is not allowed')
        WHEN 'delivered -> sending' THEN RAISE(ABORT, 'status transition delivered -> sending is not allowed')
        WHEN 'delivered -> sent' THEN RAISE(ABORT, 'status transition delivered -> sent is not allowed')
        WHEN 'delivered -> undelivered' THEN RAISE(ABORT, 'status transition delivered -> undelivered is not allowed')
        WHEN 'delivered -> declined' THEN RAISE(ABORT, 'status transition delivered -> declined is not allowed')
        WHEN 'delivered -> failed' THEN RAISE(ABORT, 'status transition delivered -> failed is not allowed')
        WHEN 'undelivered -> pending' THEN RAISE(ABORT, 'status transition undelivered -> pending is not allowed')
        WHEN 'undelivered -> sending' THEN RAISE(ABORT, 'status transition undelivered -> sending is not allowed')
        WHEN 'undelivered -> sent' THEN RAISE(ABORT, 'status transition undelivered -> sent is not allowed')
        WHEN 'undelivered -> delivered' THEN RAISE(ABORT, 'status transition undelivered -> delivered is not allowed')
        WHEN 'undelivered -> declined' THEN RAISE(ABORT, 'status transition undelivered -> declined is not allowed')
        WHEN 'undelivered -> failed' THEN RAISE(ABORT, 'status transition undelivered -> failed is not allowed')
        WHEN 'declined -> pending' THEN RAISE(ABORT, 'status transition declined -> pending is not allowed')
        WHEN 'declined -> sending' THEN RAISE(ABORT, 'status transition declined -> sending is not allowed')
        WHEN 'declined -> sent' THEN RAISE(ABORT, 'status transition declined -> sent is not allowed')
        WHEN 'declined -> delivered' THEN RAISE(ABORT, 'status transition declined -> delivered is not allowed')
        WHEN 'declined -> undelivered' THEN RAISE(ABORT, 'status transition declined -> undelivered is not allowed')
        WHEN 'declined -> failed' THEN RAISE(ABORT, 'status transition declined -> failed is not allowed')
        WHEN 'failed -> pending' THEN RAISE(ABORT, 'status transition failed -> pending is not allowed')
        WHEN 'failed -> sending' THEN RAISE(ABORT, 'status transition failed -> sending is not allowed')
        WHEN 'failed -> sent' THEN RAISE(ABORT, 'status transition failed -> sent is not allowed')
        WHEN 'failed -> delivered' THEN RAISE(ABORT, 'status transition failed -> delivered is not allowed')
        WHEN 'failed -> undelivered' THEN RAISE(ABORT, 'status transition failed -> undelivered is not allowed')
        WHEN 'failed -> declined' THEN RAISE(ABORT, 'status transition failed -> declined is not allowed')
        ELSE RAISE(ABORT, 'status transition is not allowed')
    END;
END;

-- One row per send attempt.
CREATE TABLE sms_attempt (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    sms_id              INTEGER NOT NULL REFERENCES sms (id) ON DELETE CASCADE,
    attempt             INTEGER NOT NULL,
    instance            TEXT    NOT NULL,
    started_at          INTEGER NOT NULL DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    finished_at         INTEGER,
    outcome             TEXT,
    http_status         INTEGER,
    provider_message_id TEXT,
    error               TEXT,
    CONSTRAINT sms_attempt_once UNIQUE (sms_id, attempt),
    CONSTRAINT sms_attempt_outcome_known CHECK (outcome IN
        ('accepted', 'transient', 'permanent', 'invalid', 'abandoned', 'interrupted'))
);

-- One row per status transition, written in the same transaction as the change.
CREATE TABLE sms_event (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sms_id      INTEGER NOT NULL REFERENCES sms (id) ON DELETE CASCADE,
    from_status TEXT    NOT NULL,
    to_status   TEXT    NOT NULL,
    occurred_at INTEGER NOT NULL DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER)),
    reason      TEXT    NOT NULL
);

CREATE INDEX sms_event_sms_idx ON sms_event (sms_id, id);
