-- no-transaction
-- Retention (housekeeping.retention) deletes finished messages oldest first:
-- this index lets it read just the oldest ones of a table of millions and
-- stop at its batch. Partial: pending and sending rows are not in it. The
-- list is `finished_statuses!` of src/store/mod.rs; the two must agree, or
-- the planner cannot use the index. CONCURRENTLY (outside a transaction, so
-- alone in this file): on a large outbox the platform's INSERTs keep going
-- while it builds. If it is cut off, drop the INVALID index and migrate again.
CREATE INDEX CONCURRENTLY sms_finished_idx ON sms (updated_at)
    WHERE status IN ('sent', 'delivered', 'undelivered', 'declined', 'failed');
