-- A final delivery report that arrives while its message is still `sending`
-- (the provider answered the callback before the dispatcher recorded the
-- send's outcome) is kept on the row and applied by the transaction that
-- records the outcome: `sending -> delivered | undelivered` in one step,
-- with the events `sending -> sent` and `sent -> delivered | undelivered`.
-- The columns stay set afterwards, as a record that the report came first.
ALTER TABLE sms ADD COLUMN early_report TEXT
    CONSTRAINT sms_early_report_final CHECK (early_report IN ('delivered', 'undelivered'));
ALTER TABLE sms ADD COLUMN early_report_reason TEXT;

-- The graph of src/domain/status.rs, with the two moves of a kept report.
DROP TRIGGER sms_transition;

CREATE TRIGGER sms_transition BEFORE UPDATE OF status ON sms FOR EACH ROW
WHEN NEW.status IS NOT OLD.status AND (OLD.status, NEW.status) NOT IN (
    VALUES
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
)
BEGIN
    SELECT CASE OLD.status || ' -> ' || NEW.status
        WHEN 'pending -> sent' THEN RAISE(ABORT, 'status transition pending -> sent is not allowed')
        WHEN 'pending -> delivered' THEN RAISE(ABORT, 'status transition pending -> delivered is not allowed')
        WHEN 'pending -> undelivered' THEN RAISE(ABORT, 'status transition pending -> undelivered is not allowed')
        WHEN 'pending -> declined' THEN RAISE(ABORT, 'status transition pending -> declined is not allowed')
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

-- smsrelay_reports_overdue counts `sent` rows of providers that send
-- reports, older than [provider] report_window. The provider of the last
-- recorded outcome is kept on the row (attempts have it too, but a join
-- would read every attempt of the history), so the count is a range scan
-- of this partial index per provider that reads only the overdue rows.
-- Rows sent before this migration have no provider and are not counted.
ALTER TABLE sms ADD COLUMN provider TEXT;
CREATE INDEX sms_sent_idx ON sms (provider, sent_at) WHERE status = 'sent';
