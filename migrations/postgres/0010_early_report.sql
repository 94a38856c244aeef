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

-- smsrelay_reports_overdue counts `sent` rows of providers that send
-- reports, older than [provider] report_window. The provider of the last
-- recorded outcome is kept on the row (attempts have it too, but a join
-- would read every attempt of the history), so the count is a range scan
-- of this partial index per provider that reads only the overdue rows.
-- Rows sent before this migration have no provider and are not counted.
-- Built in the migration's transaction (CONCURRENTLY would need a file of
-- its own): on an outbox of millions the platform's INSERTs wait the
-- seconds the build takes.
ALTER TABLE sms ADD COLUMN provider text;
CREATE INDEX sms_sent_idx ON sms (provider, sent_at) WHERE status = 'sent';
