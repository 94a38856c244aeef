//! What the database refuses or cannot do right now, on each store: values it
//! will not hold are recorded sanitised (never losing the outcome or the rest
//! of the batch), and errors that can succeed on a second try are classified
//! as retryable, from real failing statements.

use std::time::Duration;

use smsrelay::domain::NextState;
use smsrelay::store::StoreError;
use sqlx::{Connection, Executor};
use tokio_util::sync::CancellationToken;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::backends::{Pool, TestStore};
use crate::dispatch::{config, dispatcher};
use crate::{ids, outcome};

conformance!(
    a_provider_id_with_a_nul_byte_is_recorded_with_the_rest_of_its_batch,
    a_value_the_schema_refuses_costs_only_its_own_field,
    over_long_values_are_recorded_shortened,
    errors_that_can_succeed_on_a_second_try_are_retryable,
    a_query_that_outlives_the_call_timeout_is_cut_off,
);

/// Accepts every message with id `prov-<id>`, except message `.0`, whose id is `.1`.
struct OddIdFor(i64, &'static str);

impl Respond for OddIdFor {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let id = body["id"].as_i64().unwrap_or_default();
        let provider_id = if id == self.0 {
            self.1.to_owned()
        } else {
            format!("prov-{id}")
        };
        ResponseTemplate::new(200).set_body_json(serde_json::json!({ "id": provider_id }))
    }
}

/// PostgreSQL refuses a NUL in text (22021): the id is stored with the NUL
/// replaced, and the batch around it is recorded as usual.
async fn a_provider_id_with_a_nul_byte_is_recorded_with_the_rest_of_its_batch(db: TestStore) {
    let mut rows = Vec::new();
    for n in 0..3 {
        rows.push(db.insert(1, "+254712345678", &format!("hello {n}")).await);
    }
    let odd = rows[1];
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(OddIdFor(odd, "bad\u{0}id"))
        .mount(&provider)
        .await;
    let dispatcher = dispatcher(&db, &config(&db, &provider.uri()));

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .expect("the batch is recorded");
    assert_eq!((report.claimed, report.sent, report.stale), (3, 3, 0));
    for id in &rows {
        let sms = db.store.get(*id).await.unwrap().unwrap();
        assert_eq!(sms.status.as_str(), "sent", "{}", db.backend.name());
        let expected = if *id == odd {
            "bad\u{FFFD}id".to_owned()
        } else {
            format!("prov-{id}")
        };
        assert_eq!(sms.provider_message_id.as_deref(), Some(expected.as_str()));
        let attempts = db.store.attempts(*id).await.unwrap();
        assert_eq!(attempts.len(), 1, "one attempt row for one send");
        assert_eq!(attempts[0].outcome.as_deref(), Some("accepted"));
        assert_eq!(
            attempts[0].provider_message_id.as_deref(),
            Some(expected.as_str())
        );
    }
    let mut sent = crate::support::received_ids(&provider).await;
    sent.sort_unstable();
    assert_eq!(sent, rows, "each message reached the provider once");
}

/// A legacy schema that holds only ASCII provider ids (a CHECK on
/// PostgreSQL, a utf8mb3 column on MySQL, a trigger on SQLite) refuses a
/// provider's id with an emoji: that row is recorded without the id, the
/// rest of its batch with theirs, each attempt once.
async fn a_value_the_schema_refuses_costs_only_its_own_field(db: TestStore) {
    match db.backend {
        crate::backends::Backend::Postgres => {
            db.exec(
                "ALTER TABLE sms_attempt ADD CONSTRAINT ascii_provider_ids
                 CHECK (octet_length(provider_message_id) = char_length(provider_message_id))",
                &[],
            )
            .await;
        }
        crate::backends::Backend::MySql => {
            for table in ["sms", "sms_attempt"] {
                db.exec(
                    &format!(
                        "ALTER TABLE {table} MODIFY provider_message_id VARCHAR(255) CHARACTER SET utf8mb3"
                    ),
                    &[],
                )
                .await;
            }
        }
        crate::backends::Backend::Sqlite => {
            // The attempt's row is inserted whole at its outcome (or
            // completed, when an older claim wrote it): refuse both ways.
            for (name, on) in [
                ("ascii_ids_inserted", "INSERT"),
                ("ascii_ids_updated", "UPDATE"),
            ] {
                db.exec(
                    &format!(
                        "CREATE TRIGGER {name} BEFORE {on} ON sms_attempt
                         WHEN length(CAST(NEW.provider_message_id AS BLOB)) <> length(NEW.provider_message_id)
                         BEGIN SELECT RAISE(ABORT, 'provider ids are ASCII'); END"
                    ),
                    &[],
                )
                .await;
            }
        }
    }
    let mut rows = Vec::new();
    for n in 0..3 {
        rows.push(db.insert(1, "+254712345678", &format!("hello {n}")).await);
    }
    let odd = rows[1];
    let provider = MockServer::start().await;
    Mock::given(wiremock::matchers::method("POST"))
        .respond_with(OddIdFor(odd, "id-\u{1F600}"))
        .mount(&provider)
        .await;
    let dispatcher = dispatcher(&db, &config(&db, &provider.uri()));

    let report = dispatcher
        .run_once(&CancellationToken::new())
        .await
        .expect("the batch is recorded");
    assert_eq!((report.claimed, report.sent, report.stale), (3, 3, 0));
    for id in &rows {
        let sms = db.store.get(*id).await.unwrap().unwrap();
        assert_eq!(sms.status.as_str(), "sent", "{}", db.backend.name());
        let expected = (*id != odd).then(|| format!("prov-{id}"));
        assert_eq!(sms.provider_message_id, expected, "message {id}");
        let attempts = db.store.attempts(*id).await.unwrap();
        assert_eq!(attempts.len(), 1, "one attempt row for one send");
        assert_eq!(attempts[0].outcome.as_deref(), Some("accepted"));
        assert_eq!(attempts[0].provider_message_id, expected);
    }
    let (_, to, reason) = db.transitions(odd).await.pop().unwrap();
    assert_eq!(to, "sent");
    assert!(reason.contains("the database refused"), "{reason}");
    let mut sent = crate::support::received_ids(&provider).await;
    sent.sort_unstable();
    assert_eq!(sent, rows, "each message reached the provider once");
}

/// A provider id longer than any id column (MySQL's VARCHAR(255); on
/// PostgreSQL its index holds at most about 2.7 kB) and an error text longer
/// than MySQL's TEXT: both are stored cut to what every database holds.
async fn over_long_values_are_recorded_shortened(db: TestStore) {
    let sent = db.insert(1, "+254712345678", "hello").await;
    let retried = db.insert(1, "+254712345678", "hello").await;
    let claim = db
        .store
        .claim("node-a", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ids(&claim), [sent, retried]);
    // Random letters, so that no compression brings them under a limit.
    let long_id: String = (0..8000)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect();
    let long_error: String = (0..70_000)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect();
    let mut accepted = outcome(sent, 1, NextState::Sent);
    accepted.provider_message_id = Some(long_id.clone());
    let mut transient = outcome(retried, 1, NextState::Retry(Duration::from_secs(1)));
    transient.error = Some(long_error.clone());

    let report = db
        .store
        .record_outcomes("node-a", &[accepted, transient])
        .await
        .expect("over-long values do not fail the batch");
    assert_eq!((report.applied, report.stale), (2, 0));

    let sms = db.store.get(sent).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "sent", "{}", db.backend.name());
    let stored = sms.provider_message_id.unwrap();
    assert_eq!(stored.chars().count(), 255);
    assert!(long_id.starts_with(&stored));
    let attempt = &db.store.attempts(sent).await.unwrap()[0];
    assert_eq!(
        attempt.provider_message_id.as_deref(),
        Some(stored.as_str())
    );

    let sms = db.store.get(retried).await.unwrap().unwrap();
    assert_eq!(sms.status.as_str(), "pending");
    let error = sms.last_error.unwrap();
    assert!(error.chars().count() <= 4000, "{}", error.len());
    assert!(long_error.starts_with(error.trim_end_matches('…')));
    let attempts = db.store.attempts(retried).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome.as_deref(), Some("transient"));
}

/// `(what, the error)` of statements that fail for a reason that passes:
/// a row lock held by another session, a statement timeout, a read-only
/// transaction (a server after failover), SQLite's write lock.
async fn retryable_failures(db: &TestStore) -> Vec<(&'static str, sqlx::Error)> {
    let id = db.insert(1, "+254712345678", "hello").await;
    let mut failures = Vec::new();
    match &db.pool {
        Pool::Postgres(pool) => {
            let mut holder = pool.acquire().await.unwrap();
            holder.execute("BEGIN").await.unwrap();
            sqlx::query("SELECT id FROM sms WHERE id = $1 FOR UPDATE")
                .bind(id)
                .execute(&mut *holder)
                .await
                .unwrap();
            let mut other = pool.acquire().await.unwrap();
            other.execute("SET lock_timeout = '100ms'").await.unwrap();
            let locked = sqlx::query("UPDATE sms SET segments = 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *other)
                .await;
            failures.push(("lock_timeout", locked.unwrap_err()));
            holder.execute("ROLLBACK").await.unwrap();

            other
                .execute("SET statement_timeout = '50ms'")
                .await
                .unwrap();
            let slow = other.execute("SELECT pg_sleep(2)").await;
            failures.push(("statement_timeout", slow.unwrap_err()));
            other.execute("RESET statement_timeout").await.unwrap();

            other
                .execute("SET default_transaction_read_only = on")
                .await
                .unwrap();
            let read_only = sqlx::query("UPDATE sms SET segments = 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *other)
                .await;
            failures.push(("read-only transaction", read_only.unwrap_err()));
            other.close_on_drop();
            failures.push(("deadlock", deadlock(db, "$1").await));
        }
        Pool::MySql(pool) => {
            let mut holder = pool.acquire().await.unwrap();
            holder.execute("BEGIN").await.unwrap();
            sqlx::query("SELECT id FROM sms WHERE id = ? FOR UPDATE")
                .bind(id)
                .execute(&mut *holder)
                .await
                .unwrap();
            let mut other = pool.acquire().await.unwrap();
            other
                .execute("SET SESSION innodb_lock_wait_timeout = 1")
                .await
                .unwrap();
            let locked = sqlx::query("UPDATE sms SET segments = 1 WHERE id = ?")
                .bind(id)
                .execute(&mut *other)
                .await;
            failures.push(("innodb_lock_wait_timeout", locked.unwrap_err()));
            holder.execute("ROLLBACK").await.unwrap();

            other.execute("START TRANSACTION READ ONLY").await.unwrap();
            let read_only = sqlx::query("UPDATE sms SET segments = 1 WHERE id = ?")
                .bind(id)
                .execute(&mut *other)
                .await;
            failures.push(("read-only transaction", read_only.unwrap_err()));
            other.execute("ROLLBACK").await.unwrap();

            // MariaDB's statement timeout.
            other
                .execute("SET SESSION max_statement_time = 0.05")
                .await
                .unwrap();
            let slow = other.execute("SELECT SLEEP(2)").await;
            failures.push(("max_statement_time", slow.unwrap_err()));
            other
                .execute("SET SESSION max_statement_time = 0")
                .await
                .unwrap();
            failures.push(("deadlock", deadlock(db, "?").await));
        }
        Pool::Sqlite(_) => {
            let options: sqlx::sqlite::SqliteConnectOptions = db.url.parse().unwrap();
            let mut holder = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap();
            holder.execute("BEGIN IMMEDIATE").await.unwrap();
            let mut other =
                sqlx::SqliteConnection::connect_with(&options.busy_timeout(Duration::ZERO))
                    .await
                    .unwrap();
            let busy = other.execute("BEGIN IMMEDIATE").await;
            failures.push(("write lock held (SQLITE_BUSY)", busy.unwrap_err()));
            holder.execute("ROLLBACK").await.unwrap();
        }
    }
    failures
}

/// Two sessions that each lock one row and then want the other's: the
/// server breaks the deadlock by failing one of them; returns that error.
async fn deadlock(db: &TestStore, placeholder: &str) -> sqlx::Error {
    let a = db.insert(1, "+254712345678", "a").await;
    let b = db.insert(1, "+254712345678", "b").await;
    let lock = format!("UPDATE sms SET segments = 1 WHERE id = {placeholder}");
    let session = |first: i64, second: i64| {
        let db_pool = db.pool.clone();
        let lock = lock.clone();
        async move {
            macro_rules! run {
                ($pool:expr) => {{
                    let mut tx = $pool.begin().await.unwrap();
                    let sql = sqlx::AssertSqlSafe(lock.clone());
                    sqlx::query(sql)
                        .bind(first)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let sql = sqlx::AssertSqlSafe(lock);
                    let result = sqlx::query(sql).bind(second).execute(&mut *tx).await;
                    tx.rollback().await.ok();
                    result.err()
                }};
            }
            match &db_pool {
                Pool::Postgres(pool) => run!(pool),
                Pool::MySql(pool) => run!(pool),
                Pool::Sqlite(_) => None,
            }
        }
    };
    let (one, two) = tokio::join!(session(a, b), session(b, a));
    one.or(two)
        .expect("one of the two sessions was chosen as the deadlock victim")
}

async fn errors_that_can_succeed_on_a_second_try_are_retryable(db: TestStore) {
    for (what, error) in retryable_failures(&db).await {
        let shown = error.to_string();
        let classified = StoreError::from(error);
        assert!(
            classified.is_transient(),
            "{} {what}: {shown} is retryable, got {classified:?}",
            db.backend.name()
        );
    }
    // A statement that can never succeed is not.
    let broken = db.try_exec("SELECT no_such_column FROM sms", &[]).await;
    assert!(!StoreError::from(broken.unwrap_err()).is_transient());
}

/// An API query stuck behind a table lock (on SQLite, readers never wait) is
/// cut off at `database.call_timeout` as the database being unavailable, and
/// the store answers again once the lock is gone.
async fn a_query_that_outlives_the_call_timeout_is_cut_off(db: TestStore) {
    let id = db.insert(1, "+254712345678", "hello").await;
    let mut options = crate::backends::options(&db.url);
    options.call_timeout = Duration::from_millis(500);
    let store = smsrelay::store::open(&options).unwrap();
    assert!(store.get(id).await.unwrap().is_some());
    let lock = match &db.pool {
        Pool::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            tx.execute("LOCK TABLE sms IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            Some(Box::new(move || drop(tx)) as Box<dyn FnOnce() + Send>)
        }
        Pool::MySql(pool) => {
            let mut conn = pool.acquire().await.unwrap();
            conn.execute("LOCK TABLES sms WRITE").await.unwrap();
            Some(Box::new(move || conn.close_on_drop()) as Box<dyn FnOnce() + Send>)
        }
        Pool::Sqlite(_) => None,
    };
    let Some(unlock) = lock else { return };

    let started = std::time::Instant::now();
    let stuck = store.get(id).await.unwrap_err();
    assert!(
        matches!(stuck, StoreError::TimedOut(_)) && stuck.is_transient(),
        "{stuck:?}"
    );
    assert!(
        stuck.to_string().contains("database.call_timeout"),
        "{stuck}"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    unlock();
    assert!(
        crate::support::eventually(Duration::from_secs(10), || async {
            store.get(id).await.is_ok_and(|sms| sms.is_some())
        })
        .await,
        "the store answers again"
    );
}
