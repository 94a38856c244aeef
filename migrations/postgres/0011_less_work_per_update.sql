-- Less work on every status change (issue 11: the claim and the outcome
-- each update `sms`; neither update can be HOT, since `status` is indexed).
--
-- 1. The state machine's check (migrations 0001 and 0010, with the two
--    moves of a kept delivery report) as a WHEN clause: the
--    executor tests the allowed moves itself, and the PL/pgSQL function runs
--    only for a refused one, to raise the same error. Before, it ran on
--    every status change, twice per message sent. SQLite's trigger has the
--    same shape.
DROP TRIGGER sms_transition ON sms;
CREATE TRIGGER sms_transition BEFORE UPDATE OF status ON sms
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND (OLD.status, NEW.status) NOT IN (
        ('pending', 'sending'),
        ('pending', 'failed'),
        ('sending', 'sent'),
        ('sending', 'pending'),
        ('sending', 'declined'),
        ('sending', 'failed'),
        ('sending', 'delivered'),
        ('sending', 'undelivered'),
        ('sent', 'delivered'),
        ('sent', 'undelivered')))
    EXECUTE FUNCTION sms_check_transition();

-- 2. Delivery reports find their message through `sms_attempt`'s index on
--    the provider's id (migration 0005); nothing reads this one, which every
--    `sent` outcome and every delivery report added an entry to.
DROP INDEX sms_provider_message_idx;
