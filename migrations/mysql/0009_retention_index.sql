-- Retention (housekeeping.retention) deletes finished messages: this index
-- lets it read just the old ones of each finished status and stop at its
-- batch. No partial indexes on MySQL, so it leads with `status` (the
-- pending and sending ranges are never read). InnoDB builds it online:
-- the platform's INSERTs keep going meanwhile.
CREATE INDEX sms_finished_idx ON sms (status, updated_at);
