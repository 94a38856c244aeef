-- The SMS outbox on MariaDB 10.6+ / MySQL 8.0.16+: the same tables, columns,
-- states, constraints and transition rules as migrations/postgres, in this
-- dialect. Where MySQL forces a different shape, a comment says why.
--
-- Times are DATETIME(6) holding UTC. smsrelay forces time_zone = '+00:00' on
-- its own connections; the defaults below use UTC_TIMESTAMP(6), not NOW(6),
-- so rows INSERTed by the platform get UTC times whatever its session time zone.
-- The platform must write `not_before` / `expires_at` in UTC too.
--
-- Text columns that are indexed or compared exactly are VARCHAR (MySQL cannot
-- index TEXT without a prefix length) with a binary collation, so that
-- idempotency keys, statuses and numbers compare exactly as they do on
-- PostgreSQL instead of case-insensitively.

CREATE TABLE sms (
    id                  BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    client_id           BIGINT,
    staff_id            BIGINT,
    -- The number as it was when the message was created (traceability).
    mobile_no           VARCHAR(64)  NOT NULL,
    message             TEXT         NOT NULL,
    status              VARCHAR(16)  NOT NULL DEFAULT 'pending',
    created_at          DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    -- Optional: do not send before / never send after (UTC).
    not_before          DATETIME(6),
    expires_at          DATETIME(6),

    -- Owned by smsrelay.
    attempts            INT          NOT NULL DEFAULT 0,
    next_attempt_at     DATETIME(6),
    -- When the row is due: a stored column so the claim query can walk one index.
    due_at              DATETIME(6)  GENERATED ALWAYS AS (COALESCE(next_attempt_at, not_before, created_at)) STORED,
    locked_by           VARCHAR(200),
    lease_expires_at    DATETIME(6),
    sent_at             DATETIME(6),
    delivered_at        DATETIME(6),
    provider_message_id VARCHAR(255),
    last_error          TEXT,
    segments            INT,
    updated_at          DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    -- Set by POST /sms when the caller sends an Idempotency-Key header.
    idempotency_key     VARCHAR(255),

    CONSTRAINT sms_one_recipient CHECK ((client_id IS NULL) <> (staff_id IS NULL)),
    CONSTRAINT sms_status_known CHECK (status IN
        ('pending', 'sending', 'sent', 'delivered', 'undelivered', 'declined', 'failed')),
    CONSTRAINT sms_attempts_non_negative CHECK (attempts >= 0),
    -- A lease exists exactly while a row is `sending`.
    CONSTRAINT sms_lease_while_sending CHECK (
        (status = 'sending') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- MySQL has no partial indexes: where PostgreSQL indexes only the rows of one
-- status, these lead with `status` so the claim, expiry and lease scans still
-- walk only the rows they need.
-- Claim: due pending rows in due order.
CREATE INDEX sms_due_idx ON sms (status, due_at, id);
-- Expiry sweep before each claim.
CREATE INDEX sms_expiry_idx ON sms (status, expires_at);
-- Lease reaper.
CREATE INDEX sms_lease_idx ON sms (status, lease_expires_at);
-- Screens and operators: a client's or staff member's messages, by status, by date.
CREATE INDEX sms_client_idx ON sms (client_id, id);
CREATE INDEX sms_staff_idx ON sms (staff_id, id);
CREATE INDEX sms_status_idx ON sms (status, id);
CREATE INDEX sms_created_idx ON sms (created_at, id);
-- A retried POST /sms finds its first row. A plain UNIQUE index: NULLs are distinct.
CREATE UNIQUE INDEX sms_idempotency_idx ON sms (idempotency_key);
-- Delivery reports find their message by the provider's id.
CREATE INDEX sms_provider_message_idx ON sms (provider_message_id);

-- The state machine, enforced by the database as well as by the code
-- (src/domain/status.rs holds the same graph). MySQL has no `UPDATE OF column`
-- triggers, so this one fires on every update and compares the status itself.
-- One statement, no DELIMITER: the server parses BEGIN ... END as one unit.
CREATE TRIGGER sms_transition BEFORE UPDATE ON sms FOR EACH ROW
BEGIN
    DECLARE msg VARCHAR(128);
    IF NEW.status <> OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('pending', 'sending'),
        ('pending', 'failed'),
        ('sending', 'sent'),
        ('sending', 'pending'),
        ('sending', 'declined'),
        ('sending', 'failed'),
        ('sent', 'delivered'),
        ('sent', 'undelivered')
    ) THEN
        SET msg = CONCAT('sms ', OLD.id, ': status transition ', OLD.status, ' -> ', NEW.status, ' is not allowed');
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
    END IF;
END;

-- One row per send attempt.
CREATE TABLE sms_attempt (
    id                  BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    sms_id              BIGINT       NOT NULL,
    attempt             INT          NOT NULL,
    instance            VARCHAR(200) NOT NULL,
    started_at          DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    finished_at         DATETIME(6),
    outcome             VARCHAR(16),
    http_status         INT,
    provider_message_id VARCHAR(255),
    error               TEXT,
    CONSTRAINT sms_attempt_sms_fk FOREIGN KEY (sms_id) REFERENCES sms (id) ON DELETE CASCADE,
    CONSTRAINT sms_attempt_once UNIQUE (sms_id, attempt),
    CONSTRAINT sms_attempt_outcome_known CHECK (outcome IN
        ('accepted', 'transient', 'permanent', 'invalid', 'abandoned', 'interrupted'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per status transition, written in the same transaction as the change.
CREATE TABLE sms_event (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    sms_id      BIGINT       NOT NULL,
    from_status VARCHAR(16)  NOT NULL,
    to_status   VARCHAR(16)  NOT NULL,
    occurred_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    reason      TEXT         NOT NULL,
    CONSTRAINT sms_event_sms_fk FOREIGN KEY (sms_id) REFERENCES sms (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE INDEX sms_event_sms_idx ON sms_event (sms_id, id);
