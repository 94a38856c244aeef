-- `unknown`: the request was written but its answer was lost (timeout,
-- connection reset); the provider may have the message.
--
-- SQLite cannot alter a CHECK constraint. Widening one changes nothing
-- stored, so the table's definition is edited in place, the procedure
-- https://www.sqlite.org/lang_altertable.html#otheralter gives for it:
-- RESET reloads this connection's schema, and the CREATE/DROP bumps the
-- schema version so every other connection reloads it too.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(sql, '''abandoned'', ''interrupted'')', '''abandoned'', ''interrupted'', ''unknown'')')
WHERE type = 'table' AND name = 'sms_attempt';
PRAGMA writable_schema = RESET;
CREATE TABLE sms_attempt_outcome_unknown_bump (x INTEGER);
DROP TABLE sms_attempt_outcome_unknown_bump;
