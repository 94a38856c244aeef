-- Wakes the dispatchers (LISTEN smsrelay_new_sms) when the platform inserts
-- messages: one notification per INSERT statement, delivered at its commit.
-- Identical notifications of one transaction are folded into one.
CREATE FUNCTION smsrelay_notify_new_sms() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('smsrelay_new_sms', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER sms_notify_new AFTER INSERT ON sms
    FOR EACH STATEMENT EXECUTE FUNCTION smsrelay_notify_new_sms();
