-- Which provider each attempt went to (several providers may serve one outbox).
ALTER TABLE sms_attempt ADD COLUMN provider text;
