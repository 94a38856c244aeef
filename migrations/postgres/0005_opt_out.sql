-- Recipients who unsubscribed, as a provider reported it (Twilio 21610,
-- Africa's Talking 406): later messages to them are declined before any
-- send. Keyed by the SHA-256 of the E.164 number in hex, not the number
-- (README "Opt-outs" says why); cleared with `smsrelay opt-out remove`.
CREATE TABLE sms_opt_out (
    number_sha256 char(64)    PRIMARY KEY,
    provider      text        NOT NULL,
    -- The message whose send revealed it (no foreign key: retention may delete it).
    sms_id        bigint,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sms_opt_out_hex CHECK (number_sha256 ~ '^[0-9a-f]{64}$')
);

-- Africa's Talking's delivery reports name the message by its messageId only.
CREATE INDEX sms_attempt_provider_message_idx ON sms_attempt (provider_message_id)
    WHERE provider_message_id IS NOT NULL;
