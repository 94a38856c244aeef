-- Recipients who unsubscribed, as a provider reported it (Twilio 21610,
-- Africa's Talking 406): later messages to them are declined before any
-- send. Keyed by the SHA-256 of the E.164 number in hex, not the number
-- (README "Opt-outs" says why); cleared with `smsrelay opt-out remove`.
CREATE TABLE sms_opt_out (
    number_sha256 TEXT    PRIMARY KEY
        CHECK (length(number_sha256) = 64 AND number_sha256 NOT GLOB '*[^0-9a-f]*'),
    provider      TEXT    NOT NULL,
    -- The message whose send revealed it (no foreign key: retention may delete it).
    sms_id        INTEGER,
    created_at    INTEGER NOT NULL DEFAULT (CAST(round((julianday('now') - 2440587.5) * 86400000) AS INTEGER))
);

-- Africa's Talking's delivery reports name the message by its messageId only.
CREATE INDEX sms_attempt_provider_message_idx ON sms_attempt (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
