-- A final delivery report that arrives while its message is still `sending`
-- (the provider answered the callback before the dispatcher recorded the
-- send's outcome) is kept on the row and applied by the statement that
-- records the outcome: `sending -> delivered | undelivered` in one step,
-- with the events `sending -> sent` and `sent -> delivered | undelivered`.
-- The columns stay set afterwards, as a record that the report came first.
ALTER TABLE sms ADD COLUMN early_report text
    CONSTRAINT sms_early_report_final CHECK (early_report IN ('delivered', 'undelivered'));
ALTER TABLE sms ADD COLUMN early_report_reason text;

-- The graph of src/domain/status.rs, with the two moves of a kept report.
CREATE OR REPLACE FUNCTION sms_check_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND (OLD.status, NEW.status) NOT IN (
        ('pending', 'sending'),
        ('pending', 'failed'),
        ('sending', 'sent'),
        ('sending', 'pending'),
        ('sending', 'declined'),
        ('sending', 'failed'),
        ('sending', 'delivered'),
        ('sending', 'undelivered'),
        ('sent', 'delivered'),
        ('sent', 'undelivered')
    ) THEN
        RAISE EXCEPTION 'sms %: status transition % -> % is not allowed', OLD.id, OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- smsrelay_reports_overdue counts `sent` rows older than [provider]
-- report_window: partial, so delivered and failed rows cost nothing. Built
-- in the migration's transaction (a CONCURRENTLY build would need a file of
-- its own): on an outbox of millions it holds off the platform's INSERTs for
-- the seconds the build takes.
CREATE INDEX sms_sent_idx ON sms (sent_at) WHERE status = 'sent';
