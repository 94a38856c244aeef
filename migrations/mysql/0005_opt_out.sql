-- Recipients who unsubscribed, as a provider reported it (Twilio 21610,
-- Africa's Talking 406): later messages to them are declined before any
-- send. Keyed by the SHA-256 of the E.164 number in hex, not the number
-- (README "Opt-outs" says why); cleared with `smsrelay opt-out remove`.
CREATE TABLE sms_opt_out (
    number_sha256 CHAR(64)    NOT NULL PRIMARY KEY,
    provider      VARCHAR(64) NOT NULL,
    -- The message whose send revealed it (no foreign key: retention may delete it).
    sms_id        BIGINT,
    created_at    DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    CONSTRAINT sms_opt_out_hex CHECK (number_sha256 REGEXP '^[0-9a-f]{64}$')
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Africa's Talking's delivery reports name the message by its messageId only.
-- (MySQL has no partial index: NULLs are indexed too.)
CREATE INDEX sms_attempt_provider_message_idx ON sms_attempt (provider_message_id);
