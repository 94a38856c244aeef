-- 1,000,000 messages of history, as a year of a core-banking platform leaves them.
-- Deterministic (setseed): every run measures the same table.
--
--   recipients  90% clients, 100,000 ids, skewed: client_id = 1 + floor(100000 * r^3), so
--               client 1 has ~19,000 messages, ~16 clients have over 1,000, the median a handful;
--               plus client 100000, onboarded 90 days ago (say, a payroll group account), with
--               ~22,000 messages, all among the newest quarter of ids;
--               10% staff, 2,000 ids, skewed as r^2.
--   time        ids in creation order, created_at spread evenly over the last 365 days.
--   status      the newest 3% are `pending`, scheduled hours to weeks ahead (not_before in the
--               future, a tenth of them waiting for a retry), so no dispatcher sends them;
--               the rest: 75% delivered, 17% sent, 3% undelivered, 2.5% failed, 2.5% declined.
--   history     one sms_attempt row per attempt, sms_event rows for every transition.
SELECT setseed(0.20261127);

INSERT INTO sms (id, client_id, staff_id, mobile_no, message, status, created_at, not_before,
                 attempts, next_attempt_at, sent_at, delivered_at, provider_message_id,
                 last_error, segments, updated_at)
SELECT id, client_id, staff_id,
       CASE WHEN client_id IS NOT NULL AND client_id % 5 = 0
            THEN '07' || lpad(((client_id * 7919) % 100000000)::text, 8, '0')
            ELSE '+254 7' || lpad(((coalesce(client_id, staff_id + 900000) * 7919) % 100000000)::text, 8, '0')
       END,
       CASE floor(r_text * 5)::int
           WHEN 0 THEN 'Dear customer, your loan repayment of KES ' || (100 + id * 37 % 50000)
                       || ' is due on ' || to_char(created_at + interval '7 days', 'DD Mon YYYY')
                       || '. Pay via paybill 123456, account ' || coalesce(client_id, staff_id) || '.'
           WHEN 1 THEN 'Your savings account has been credited with KES ' || (50 + id * 13 % 90000)
                       || '. Available balance KES ' || (id * 7 % 400000) || '. Ref ' || id || '.'
           WHEN 2 THEN 'Your loan of KES ' || (1000 + id * 11 % 200000) || ' is ' || (1 + id % 30)
                       || ' days overdue. Please pay to avoid penalties. Call 0800 123 456 for help.'
           WHEN 3 THEN 'Your one-time code is ' || lpad((id * 7919 % 1000000)::text, 6, '0')
                       || '. It expires in 5 minutes. Never share it with anyone.'
           ELSE 'Meeting reminder: group ' || (id % 900) || ' meets on '
                || to_char(created_at + interval '2 days', 'Dy DD Mon') || ' at 10:00. Bring your passbook.'
       END,
       status, created_at,
       CASE WHEN status = 'pending' THEN now() + (1 + r_time * 720) * interval '1 hour' END,
       attempts,
       CASE WHEN status = 'pending' AND attempts > 0 THEN now() + (1 + r_time * 24) * interval '1 hour' END,
       sent_at,
       CASE WHEN status = 'delivered' THEN sent_at + (2 + r_time * 60) * interval '1 second' END,
       CASE WHEN sent_at IS NOT NULL THEN 'prov-' || id END,
       CASE status
           WHEN 'failed' THEN 'provider answered HTTP 503'
           WHEN 'declined' THEN 'provider refused the message: HTTP 400'
           WHEN 'pending' THEN CASE WHEN attempts > 0 THEN 'provider answered HTTP 503' END
       END,
       CASE WHEN attempts > 0 THEN 1 END,
       CASE WHEN status = 'delivered' THEN sent_at + (2 + r_time * 60) * interval '1 second'
            ELSE coalesce(sent_at, created_at + r_time * interval '1 minute') END
FROM (
    SELECT *,
           CASE WHEN status = 'pending' THEN (r_text < 0.1)::int * (1 + (r_time < 0.5)::int)
                WHEN status = 'failed' THEN 8
                WHEN status = 'declined' THEN 1
                ELSE 1 + (r_status2 < 0.05)::int + (r_status2 < 0.01)::int
           END AS attempts,
           CASE WHEN status IN ('sent', 'delivered', 'undelivered')
                THEN created_at + (1 + r_time * 30) * interval '1 second' END AS sent_at
    FROM (
        SELECT *,
               CASE WHEN r_who < 0.1 THEN NULL
                    WHEN r_who < 0.19 AND id > 753425 THEN 100000
                    ELSE 1 + least(floor(100000 * r_client ^ 3), 99998)::bigint
               END AS client_id,
               CASE WHEN r_who < 0.1 THEN 1 + least(floor(2000 * r_client ^ 2), 1999)::bigint END AS staff_id,
               CASE WHEN id > 970000 THEN 'pending'
                    WHEN r_status < 0.75 THEN 'delivered'
                    WHEN r_status < 0.92 THEN 'sent'
                    WHEN r_status < 0.95 THEN 'undelivered'
                    WHEN r_status < 0.975 THEN 'failed'
                    ELSE 'declined'
               END AS status,
               now() - (1 - id / 1000000.0) * interval '365 days' AS created_at
        FROM (
            SELECT g::bigint AS id, random() AS r_who, random() AS r_client, random() AS r_status,
                   random() AS r_status2, random() AS r_text, random() AS r_time
            FROM generate_series(1, 1000000) g
        ) draws
    ) shaped
) s;

SELECT setval(pg_get_serial_sequence('sms', 'id'), (SELECT max(id) FROM sms));

-- Every attempt: retried ones transient, the last one with the row's outcome.
INSERT INTO sms_attempt (sms_id, attempt, instance, started_at, finished_at, outcome,
                         http_status, provider_message_id, error)
SELECT s.id, a, 'sms-host-' || (1 + (s.id + a) % 2),
       s.created_at + (a - 1) * interval '30 seconds',
       s.created_at + (a - 1) * interval '30 seconds' + interval '300 milliseconds',
       CASE WHEN a < s.attempts OR s.status IN ('pending', 'failed') THEN 'transient'
            WHEN s.status = 'declined' THEN 'permanent'
            ELSE 'accepted' END,
       CASE WHEN a < s.attempts OR s.status IN ('pending', 'failed') THEN 503
            WHEN s.status = 'declined' THEN 400
            ELSE 200 END,
       CASE WHEN a = s.attempts THEN s.provider_message_id END,
       CASE WHEN a < s.attempts OR s.status IN ('pending', 'failed') THEN 'provider answered HTTP 503'
            WHEN s.status = 'declined' THEN s.last_error END
FROM sms s CROSS JOIN LATERAL generate_series(1, s.attempts) a
ORDER BY s.id, a;

-- Every transition, in order: claim, then retry / outcome, then the delivery report.
INSERT INTO sms_event (sms_id, from_status, to_status, occurred_at, reason)
SELECT sms_id, from_status, to_status, occurred_at, reason FROM (
    SELECT a.sms_id, a.attempt, 1 AS step, 'pending' AS from_status, 'sending' AS to_status,
           a.started_at AS occurred_at,
           'claimed by ' || a.instance || ' for attempt ' || a.attempt AS reason
    FROM sms_attempt a
    UNION ALL
    SELECT a.sms_id, a.attempt, 2, 'sending',
           CASE WHEN a.outcome = 'accepted' THEN 'sent'
                WHEN a.outcome = 'permanent' THEN 'declined'
                WHEN s.status = 'failed' AND a.attempt = s.attempts THEN 'failed'
                ELSE 'pending' END,
           a.finished_at,
           CASE WHEN a.outcome = 'accepted' THEN 'accepted by provider webhook'
                WHEN a.outcome = 'permanent' THEN a.error
                WHEN s.status = 'failed' AND a.attempt = s.attempts
                    THEN 'attempts exhausted after ' || a.attempt || ' sends: ' || a.error
                ELSE a.error || '; retry in 30s' END
    FROM sms_attempt a JOIN sms s ON s.id = a.sms_id
    UNION ALL
    SELECT s.id, s.attempts, 3, 'sent', s.status, coalesce(s.delivered_at, s.sent_at + interval '1 minute'),
           'delivery report: ' || s.status
    FROM sms s WHERE s.status IN ('delivered', 'undelivered')
) e
ORDER BY sms_id, attempt, step;
