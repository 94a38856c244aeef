//! Retention: old finished messages go with their history, in bounded
//! batches, once; recent ones and every pending or sending row stay.

use std::time::Duration;

use smsrelay::domain::NextState;
use smsrelay::housekeeping::{RetentionSettings, retain_once};
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Pool, TestStore, int, text, time};
use crate::outcome;

conformance!(
    old_finished_messages_go_with_their_history_and_nothing_else_does,
    retention_deletes_in_bounded_batches_until_done,
    concurrent_retention_runs_delete_each_row_once,
    the_retention_scan_uses_the_finished_index,
);

const DAY: Duration = Duration::from_secs(24 * 3600);
const RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// `n` new messages claimed by one instance and settled as `next`; their ids.
async fn settled(db: &TestStore, n: usize, next: NextState) -> Vec<i64> {
    for i in 0..n {
        db.insert(i as i64 + 1, "+254712345678", "hello").await;
    }
    let claim = db
        .store
        .claim("node-a", n as u32, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claim.messages.len(), n);
    let outcomes: Vec<_> = claim
        .messages
        .iter()
        .map(|m| outcome(m.id, m.attempt, next))
        .collect();
    db.store.record_outcomes("node-a", &outcomes).await.unwrap();
    claim.messages.iter().map(|m| m.id).collect()
}

/// Makes a row look last changed `age` ago by the database's clock.
async fn age(db: &TestStore, id: i64, age: Duration) {
    let then = db.now().await - age;
    db.exec(
        "UPDATE sms SET updated_at = $1 WHERE id = $2",
        &[time(then), int(id)],
    )
    .await;
}

/// (messages, attempts, events) of one message still in the tables.
async fn stored(db: &TestStore, id: i64) -> (i64, i64, i64) {
    (
        db.count("SELECT count(*) FROM sms WHERE id = $1", &[int(id)])
            .await,
        db.count(
            "SELECT count(*) FROM sms_attempt WHERE sms_id = $1",
            &[int(id)],
        )
        .await,
        db.count(
            "SELECT count(*) FROM sms_event WHERE sms_id = $1",
            &[int(id)],
        )
        .await,
    )
}

fn settings(batch: u32) -> RetentionSettings {
    RetentionSettings {
        older_than: RETENTION,
        schedule: "0 30 3 * * *".into(),
        batch,
    }
}

/// Every finished state past the retention goes, with its attempts and
/// events; a recent finished row, and pending and sending rows however old,
/// stay with their whole history.
async fn old_finished_messages_go_with_their_history_and_nothing_else_does(db: TestStore) {
    let sent = settled(&db, 1, NextState::Sent).await[0];
    let declined = settled(&db, 1, NextState::Declined).await[0];
    let failed = settled(&db, 1, NextState::Failed).await[0];
    let [delivered, undelivered] = settled(&db, 2, NextState::Sent).await[..] else {
        unreachable!()
    };
    for (id, status) in [(delivered, "delivered"), (undelivered, "undelivered")] {
        db.exec(
            "UPDATE sms SET status = $1 WHERE id = $2",
            &[text(status), int(id)],
        )
        .await;
    }
    let recent = settled(&db, 1, NextState::Sent).await[0];
    let retried = settled(&db, 1, NextState::Retry(Duration::from_secs(3600))).await[0];
    let pending = db.insert(7, "+254712345678", "never claimed").await;
    let sending = db.insert(8, "+254712345678", "at the provider").await;
    db.store
        .claim("node-b", 10, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(db.status(sending).await, "sending");

    let old = [sent, declined, failed, delivered, undelivered];
    let kept = [(recent, 89), (retried, 400), (pending, 400), (sending, 400)];
    for id in old {
        age(&db, id, 91 * DAY).await;
    }
    for (id, days) in kept {
        age(&db, id, days * DAY).await;
    }
    let mut history = (0, 0);
    for id in old {
        let (_, attempts, events) = stored(&db, id).await;
        assert!(attempts >= 1 && events >= 2, "{id} has a history");
        history = (history.0 + attempts, history.1 + events);
    }
    let kept_before = kept_history(&db, &kept).await;

    let report = db.store.delete_finished(RETENTION, 100).await.unwrap();
    assert!(!report.skipped);
    assert_eq!(
        (
            report.messages,
            report.attempts as i64,
            report.events as i64
        ),
        (5, history.0, history.1),
        "{report:?}"
    );
    for id in old {
        assert_eq!(
            stored(&db, id).await,
            (0, 0, 0),
            "{id} and its history are gone"
        );
    }
    assert_eq!(
        kept_history(&db, &kept).await,
        kept_before,
        "recent, pending and sending rows keep everything"
    );
    assert_eq!(db.status(retried).await, "pending");
    assert_eq!(db.status(sending).await, "sending");
    let again = db.store.delete_finished(RETENTION, 100).await.unwrap();
    assert_eq!((again.messages, again.attempts, again.events), (0, 0, 0));
}

/// What is stored of each kept row.
async fn kept_history(db: &TestStore, kept: &[(i64, u32)]) -> Vec<(i64, i64, i64)> {
    let mut out = Vec::new();
    for (id, _) in kept {
        out.push(stored(db, *id).await);
    }
    out
}

/// A batch deletes at most its limit and commits on its own; a run repeats
/// batches until one comes back short.
async fn retention_deletes_in_bounded_batches_until_done(db: TestStore) {
    let first = settled(&db, 35, NextState::Sent).await;
    for id in &first {
        age(&db, *id, 100 * DAY).await;
    }
    let other = db.another_store();
    let mut passes = Vec::new();
    for _ in 0..5 {
        let pass = db.store.delete_finished(RETENTION, 10).await.unwrap();
        // Each batch is committed by itself: another connection sees it at once.
        let left = db.count("SELECT count(*) FROM sms", &[]).await;
        passes.push((pass.messages, left));
    }
    assert_eq!(passes, [(10, 25), (10, 15), (10, 5), (5, 0), (0, 0)]);
    assert_eq!(db.count("SELECT count(*) FROM sms_event", &[]).await, 0);
    assert_eq!(db.count("SELECT count(*) FROM sms_attempt", &[]).await, 0);

    let second = settled(&db, 35, NextState::Declined).await;
    for id in &second {
        age(&db, *id, 100 * DAY).await;
    }
    let run = retain_once(other.as_ref(), &settings(10), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        (run.messages, run.attempts, run.events, run.batches),
        (35, 35, 70, 4),
        "{run:?}"
    );
    assert_eq!(db.count("SELECT count(*) FROM sms", &[]).await, 0);
}

/// Two instances running retention at the same moment: no error, and
/// together they delete each row once.
async fn concurrent_retention_runs_delete_each_row_once(db: TestStore) {
    let ids = settled(&db, 60, NextState::Sent).await;
    for id in &ids {
        age(&db, *id, 100 * DAY).await;
    }
    let keep = settled(&db, 3, NextState::Sent).await;
    let other = db.another_store();
    let stop = CancellationToken::new();
    let batch = settings(7);
    let (a, b) = tokio::join!(
        retain_once(db.store.as_ref(), &batch, &stop),
        retain_once(other.as_ref(), &batch, &stop)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.messages + b.messages, 60, "{a:?} {b:?}");
    assert_eq!(a.attempts + b.attempts, 60, "{a:?} {b:?}");
    assert_eq!(a.events + b.events, 120, "{a:?} {b:?}");
    assert_eq!(db.count("SELECT count(*) FROM sms", &[]).await, 3);
    for id in keep {
        assert_eq!(stored(&db, id).await, (1, 1, 2));
    }
}

/// The batch's scan walks `sms_finished_idx` (migration 0009) on a table of
/// thousands of finished rows, rather than the whole table.
async fn the_retention_scan_uses_the_finished_index(db: TestStore) {
    let old = db.now().await - 100 * DAY;
    db.exec(
        "INSERT INTO sms (client_id, mobile_no, message, status, updated_at)
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 150)
         SELECT a.i, '+254712345678', 'old', 'delivered', $1 FROM n a, n b",
        &[time(old)],
    )
    .await;
    db.insert(1, "+254712345678", "pending").await;
    let plan = match &db.pool {
        Pool::Postgres(pool) => {
            sqlx::query("ANALYZE sms").execute(pool).await.unwrap();
            let sql = format!("EXPLAIN {}", smsrelay::store::postgres::RETENTION_DELETE);
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(RETENTION.as_millis() as i64)
                .bind(1000_i64)
                .fetch_all(pool)
                .await
                .unwrap();
            rows.join("\n")
        }
        Pool::Sqlite(pool) => {
            let sql = format!(
                "EXPLAIN QUERY PLAN {}",
                smsrelay::store::sqlite::RETENTION_ROWS
            );
            let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(0_i64)
                .bind(1000_i64)
                .fetch_all(pool)
                .await
                .unwrap();
            rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
        }
        Pool::MySql(pool) => {
            sqlx::query("ANALYZE TABLE sms")
                .execute(pool)
                .await
                .unwrap();
            let sql = format!("EXPLAIN {}", smsrelay::store::mysql::RETENTION_LOCK_ROWS);
            let rows: Vec<sqlx::mysql::MySqlRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(RETENTION.as_micros() as i64)
                .bind(1000_i64)
                .fetch_all(pool)
                .await
                .unwrap();
            use sqlx::Row;
            rows.iter()
                .map(|r| {
                    let key: Option<String> = r.try_get("key").unwrap();
                    let kind: Option<String> = r.try_get("type").unwrap();
                    format!("key={key:?} type={kind:?}")
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    eprintln!("{} plan:\n{plan}", db.backend.name());
    assert!(plan.contains("sms_finished_idx"), "{plan}");
    if db.backend == Backend::Postgres {
        assert!(!plan.contains("Seq Scan on sms "), "{plan}");
    }
    if db.backend == Backend::MySql {
        assert!(plan.contains("type=Some(\"range\")"), "{plan}");
    }
}
