-- A final delivery report that arrives while its message is still `sending`
-- (the provider answered the callback before the dispatcher recorded the
-- send's outcome) is kept on the row and applied by the transaction that
-- records the outcome: `sending -> delivered | undelivered` in one step,
-- with the events `sending -> sent` and `sent -> delivered | undelivered`.
-- The columns stay set afterwards, as a record that the report came first.
-- Nullable columns at the end: MariaDB 10.3+ and MySQL 8.0 add them instantly.
ALTER TABLE sms
    ADD COLUMN early_report VARCHAR(16) NULL,
    ADD COLUMN early_report_reason TEXT NULL,
    ADD CONSTRAINT sms_early_report_final CHECK (early_report IN ('delivered', 'undelivered'));

-- The graph of src/domain/status.rs, with the two moves of a kept report.
DROP TRIGGER sms_transition;

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
        ('sending', 'delivered'),
        ('sending', 'undelivered'),
        ('sent', 'delivered'),
        ('sent', 'undelivered')
    ) THEN
        SET msg = CONCAT('sms ', OLD.id, ': status transition ', OLD.status, ' -> ', NEW.status, ' is not allowed');
        SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = msg;
    END IF;
END;

-- smsrelay_reports_overdue counts `sent` rows of providers that send
-- reports, older than [provider] report_window. The provider of the last
-- recorded outcome is kept on the row (attempts have it too, but a join
-- would read every attempt of the history), so the count is a range scan
-- of this index per provider that reads only the overdue rows. No partial
-- indexes on MySQL, so it leads with `status`. InnoDB builds it online.
-- Rows sent before this migration have no provider and are not counted.
ALTER TABLE sms ADD COLUMN provider VARCHAR(255) NULL;
CREATE INDEX sms_sent_idx ON sms (status, provider, sent_at);
