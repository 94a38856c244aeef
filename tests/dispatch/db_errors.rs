//! Outcome writes the database refuses for a while (a row lock past
//! `lock_timeout`, a failover that leaves the server read-only) are retried
//! and recorded once, with the leases kept meanwhile; PostgreSQL, where these
//! are per-database settings.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::reaper;
use crate::support::*;

/// Accepts like [`AcceptWithId`], after a delay.
struct AcceptAfter(Duration);

impl Respond for AcceptAfter {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        AcceptWithId.respond(request).set_delay(self.0)
    }
}

/// A provider that answers after `delay`.
async fn slow_provider(delay: Duration) -> MockServer {
    let provider = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(AcceptAfter(delay))
        .mount(&provider)
        .await;
    provider
}

/// Runs `sql` on the admin connection (database-level settings, terminations).
async fn admin(sql: String) {
    let mut conn = PgConnection::connect(&admin_url()).await.expect("admin");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

/// A dispatcher whose store opens its own sessions after the test changed
/// the database's settings.
fn fresh_dispatcher(db: &TestDb, config: &smsrelay::Config) -> smsrelay::dispatch::Dispatcher {
    let store = smsrelay::store::open(&options(&db.url)).expect("store");
    let app = smsrelay::app::Application::from_parts(config, store, webhook(config));
    std::sync::Arc::try_unwrap(app.dispatcher).unwrap_or_else(|_| panic!("not shared yet"))
}

/// Each message was sent once, is `sent` and has exactly one attempt, accepted.
async fn sent_once(db: &TestDb, provider: &MockServer, rows: &[i64]) {
    let mut received = received_ids(provider).await;
    received.sort_unstable();
    assert_eq!(received, rows, "each message reached the provider once");
    for id in rows {
        assert_eq!(db.status(*id).await, "sent");
        let attempts = db.store.attempts(*id).await.unwrap();
        let outcomes: Vec<_> = attempts.iter().map(|a| a.outcome.clone()).collect();
        assert_eq!(outcomes, [Some("accepted".to_owned())], "message {id}");
    }
}

async fn wait_for_requests(provider: &MockServer, n: usize) {
    assert!(
        eventually(Duration::from_secs(10), || async {
            provider.received_requests().await.unwrap_or_default().len() >= n
        })
        .await,
        "the sends reached the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_write_that_hits_lock_timeout_is_retried_and_recorded_once() {
    let db = TestDb::new().await;
    admin(format!(
        "ALTER DATABASE {} SET lock_timeout = '200ms'",
        db.name
    ))
    .await;
    let provider = slow_provider(Duration::from_secs(1)).await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = fresh_dispatcher(&db, &config);
    let rows = vec![
        db.insert(1, "+254712345678", "one").await,
        db.insert(2, "+254712345679", "two").await,
    ];

    let stop = CancellationToken::new();
    let (report, ()) = tokio::join!(dispatcher.run_once(&stop), async {
        wait_for_requests(&provider, 2).await;
        // Another session locks a row while its outcome is on the way, for
        // ten times the lock_timeout.
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM sms WHERE id = $1 FOR UPDATE")
            .bind(rows[0])
            .execute(&mut *tx)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        tx.commit().await.unwrap();
    });
    let report = report.expect("the outcomes are recorded once the lock is gone");
    assert_eq!((report.sent, report.stale), (2, 0));
    sent_once(&db, &provider, &rows).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_recorded_after_a_failover_to_read_only_are_recorded_once() {
    let db = TestDb::new().await;
    let provider = slow_provider(Duration::from_secs(1)).await;
    let config = test_config(&db, &provider.uri());
    let dispatcher = fresh_dispatcher(&db, &config);
    let rows = vec![
        db.insert(1, "+254712345678", "one").await,
        db.insert(2, "+254712345679", "two").await,
    ];

    let stop = CancellationToken::new();
    let (report, ()) = tokio::join!(dispatcher.run_once(&stop), async {
        wait_for_requests(&provider, 2).await;
        // A failover: every session is cut, and the server that answers
        // next is read-only for a while before it takes writes.
        admin(format!(
            "ALTER DATABASE {0} SET default_transaction_read_only = on;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{0}' AND pid <> pg_backend_pid();",
            db.name
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        admin(format!(
            "ALTER DATABASE {} SET default_transaction_read_only = off",
            db.name
        ))
        .await;
    });
    let report = report.expect("the outcomes are recorded once the server takes writes");
    assert_eq!((report.sent, report.stale), (2, 0));
    sent_once(&db, &provider, &rows).await;
}

/// The outcomes wait longer than the lease (their attempt row's key is held
/// by another session's uncommitted insert) while another instance reaps and claims throughout: the
/// lease is renewed meanwhile, so nobody takes the message over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_waiting_longer_than_the_lease_keep_their_lease() {
    let lease = Duration::from_secs(3);
    let db = TestDb::new().await;
    admin(format!(
        "ALTER DATABASE {} SET lock_timeout = '200ms'",
        db.name
    ))
    .await;
    let provider = slow_provider(Duration::from_millis(500)).await;
    let mut config = test_config(&db, &provider.uri());
    config.database.connect_timeout = Duration::from_secs(1);
    config.database.call_timeout = Duration::from_secs(1);
    config.dispatch.lease = lease;
    config.validate().expect("valid");
    let node_a = fresh_dispatcher(&db, &config);
    config.dispatch.instance_id = Some("test-2".into());
    let node_b = dispatcher(&db, &config);
    let rows = vec![db.insert(1, "+254712345678", "slow to record").await];

    let stop = CancellationToken::new();
    let store = db.store();
    let (report, taken_over) = tokio::join!(node_a.run_once(&stop), async {
        wait_for_requests(&provider, 1).await;
        // The attempt's row is written at its outcome: an uncommitted row
        // with its key makes that INSERT wait (and, rolled back, lets it in).
        let mut tx = db.pool.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO sms_attempt (sms_id, attempt, instance) VALUES ($1, 1, 'blocker')",
        )
        .bind(rows[0])
        .execute(&mut *tx)
        .await
        .unwrap();
        // Reap and claim from another instance for more than two leases.
        let mut taken_over = 0;
        let until = tokio::time::Instant::now() + lease * 2 + Duration::from_secs(1);
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            smsrelay::housekeeping::reap_once(store.as_ref(), &reaper(8))
                .await
                .unwrap();
            taken_over += node_b.run_once(&stop).await.unwrap().claimed;
        }
        tx.rollback().await.unwrap();
        taken_over
    });
    assert_eq!(
        taken_over, 0,
        "the other instance never took the message over"
    );
    let report = report.expect("recorded once the lock is gone");
    assert_eq!((report.sent, report.stale), (1, 0));
    sent_once(&db, &provider, &rows).await;
}
