-- A random value per message, set when it is first claimed and kept across
-- retries: the webhook's Idempotency-Key is built from it, so it is unique
-- across deployments and database restores (ids are not), yet the same for
-- every attempt of one message (a receiver drops the duplicate of a retry).
ALTER TABLE sms ADD COLUMN send_key TEXT;
