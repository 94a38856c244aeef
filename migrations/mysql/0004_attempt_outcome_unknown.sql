-- `unknown`: the request was written but its answer was lost (timeout,
-- connection reset); the provider may have the message.
ALTER TABLE sms_attempt DROP CONSTRAINT sms_attempt_outcome_known;
ALTER TABLE sms_attempt ADD CONSTRAINT sms_attempt_outcome_known CHECK (outcome IN
    ('accepted', 'transient', 'permanent', 'invalid', 'abandoned', 'interrupted', 'unknown'));
