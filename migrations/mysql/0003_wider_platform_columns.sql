-- The platform's INSERT must never be refused for its content: in strict mode
-- MySQL rejects a value longer than its column, and the whole business
-- transaction that wrote the row fails. What does not fit a real number or
-- message is declined by the dispatcher instead, with a reason.
-- `mobile_no`: no index reads it, so TEXT. `message`: up to 16 MiB.
-- `idempotency_key`: POST /sms stores `<token name>:<key>` (key up to 200
-- characters); 768 is the most a unique utf8mb4 index can hold (3072 bytes).
ALTER TABLE sms
    MODIFY mobile_no TEXT NOT NULL,
    MODIFY message MEDIUMTEXT NOT NULL,
    MODIFY idempotency_key VARCHAR(768);
