-- Delivery reports find their message through `sms_attempt`'s index on the
-- provider's id (migration 0005); nothing reads this one, which every `sent`
-- outcome and every delivery report added an entry to (issue 11).
DROP INDEX sms_provider_message_idx ON sms;
