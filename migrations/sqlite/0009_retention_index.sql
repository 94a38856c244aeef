-- Retention (housekeeping.retention) deletes finished messages oldest first:
-- this index lets it read just the oldest ones and stop at its batch.
-- Partial, as on PostgreSQL; the list is `finished_statuses!` of
-- src/store/mod.rs, and the query must say it the same way to use the index.
CREATE INDEX sms_finished_idx ON sms (updated_at)
    WHERE status IN ('sent', 'delivered', 'undelivered', 'declined', 'failed');
