//! PostgreSQL wake-ups: the dispatcher LISTENs, and the INSERT trigger of
//! migration 0012 notifies only while an instance has a row in `sms_waiter`
//! (it waits idle), never blocking or taxing the platform's INSERTs otherwise.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Pool, TestStore};
use crate::dispatch::{
    a_new_message_wakes_the_dispatcher_before_its_next_poll, config, dispatcher,
};
use crate::support::{accepting_provider, eventually, received_ids};

async fn postgres() -> Option<TestStore> {
    TestStore::new(Backend::Postgres).await
}

fn pg(db: &TestStore) -> &PgPool {
    match &db.pool {
        Pool::Postgres(pool) => pool,
        _ => unreachable!("a PostgreSQL test store"),
    }
}

async fn listener(db: &TestStore) -> PgListener {
    let mut listener = PgListener::connect(&db.url).await.expect("listener");
    listener.listen("smsrelay_sms").await.expect("LISTEN");
    listener
}

/// Whether a notification arrives within `within`.
async fn notified(listener: &mut PgListener, within: Duration) -> bool {
    tokio::time::timeout(within, listener.recv()).await.is_ok()
}

/// Rows in `sms_waiter` that still count (an INSERT would notify).
async fn waiting(db: &TestStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sms_waiter WHERE waiting_until > now()")
        .fetch_one(pg(db))
        .await
        .unwrap()
}

async fn waiter_rows(db: &TestStore) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sms_waiter")
        .fetch_one(pg(db))
        .await
        .unwrap()
}

async fn mark_waiting(db: &TestStore, instance: &str) {
    sqlx::query(
        "INSERT INTO sms_waiter (instance, waiting_until) VALUES ($1, now() + interval '1 minute')",
    )
    .bind(instance)
    .execute(pg(db))
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_wakes_the_dispatcher_on_postgres() {
    if let Some(db) = postgres().await {
        a_new_message_wakes_the_dispatcher_before_its_next_poll(db).await
    }
}

/// Nobody waits: an INSERT notifies no one. One instance waits: the next
/// INSERT notifies once and takes its row; the one after notifies no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_notifies_only_while_a_dispatcher_waits() {
    let Some(db) = postgres().await else { return };
    let mut listener = listener(&db).await;

    db.insert(1, "+254712345678", "nobody waits").await;
    assert!(
        !notified(&mut listener, Duration::from_millis(200)).await,
        "no notification while nobody waits"
    );

    mark_waiting(&db, "idle-instance").await;
    db.insert(1, "+254712345678", "someone waits").await;
    assert!(
        notified(&mut listener, Duration::from_secs(2)).await,
        "the waiting instance is notified"
    );
    assert_eq!(waiting(&db).await, 0, "the INSERT took the waiter's row");

    db.insert(1, "+254712345678", "woken already").await;
    assert!(
        !notified(&mut listener, Duration::from_millis(200)).await,
        "one notification per idle period"
    );
}

/// A waiter row whose time has passed (its instance died) notifies no one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_row_past_its_time_notifies_no_one() {
    let Some(db) = postgres().await else { return };
    let mut listener = listener(&db).await;
    sqlx::query(
        "INSERT INTO sms_waiter (instance, waiting_until) VALUES ('died', now() - interval '1 second')",
    )
    .execute(pg(&db))
    .await
    .unwrap();
    db.insert(1, "+254712345678", "hello").await;
    assert!(!notified(&mut listener, Duration::from_millis(200)).await);
}

/// The platform's INSERT goes through at once while a waiter row is locked
/// (by a dispatcher writing it, or another inserter taking it); the
/// transaction holding the lock notifies as it commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_never_waits_for_a_locked_waiter_row() {
    let Some(db) = postgres().await else { return };
    mark_waiting(&db, "idle-instance").await;
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM sms_waiter WHERE instance = 'idle-instance' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let inserted = tokio::time::timeout(
        Duration::from_secs(2),
        db.insert(1, "+254712345678", "platform insert"),
    )
    .await;
    let took = started.elapsed();
    tx.rollback().await.unwrap();
    assert!(
        inserted.is_ok(),
        "the INSERT waited on the waiter row's lock"
    );
    assert!(
        took < Duration::from_millis(500),
        "the INSERT took {took:?}"
    );
    assert_eq!(
        waiting(&db).await,
        1,
        "the locked row was skipped, not taken"
    );
}

/// While it waits idle the dispatcher has its row in `sms_waiter`; once it
/// stops, the row is gone (so INSERTs notify no one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_dispatcher_waits_in_sms_waiter_until_it_stops() {
    let Some(db) = postgres().await else { return };
    let provider = accepting_provider().await;
    let mut config = config(&db, &provider.uri());
    config.dispatch.poll_interval = Duration::from_secs(30);
    let dispatcher = dispatcher(&db, &config);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { dispatcher.run(stop, || {}).await }
    });
    let marked = eventually(Duration::from_secs(5), || async { waiting(&db).await == 1 }).await;
    stop.cancel();
    running.await.unwrap();
    assert!(marked, "an idle dispatcher writes its waiter row");
    let gone = eventually(Duration::from_secs(2), || async {
        waiter_rows(&db).await == 0
    })
    .await;
    assert!(gone, "the row is removed at shutdown");
}

/// `dispatch.wake_on_insert = false` (behind a transaction-mode pooler): no
/// LISTEN connection, no waiter row, and messages are still sent by the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wake_on_insert_postgres_polls() {
    let Some(db) = postgres().await else { return };
    let provider = accepting_provider().await;
    let mut config = config(&db, &provider.uri());
    config.dispatch.poll_interval = Duration::from_millis(300);
    config.dispatch.wake_on_insert = false;
    let dispatcher = dispatcher(&db, &config);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let stop = stop.clone();
        async move { dispatcher.run(stop, || {}).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(pg(&db))
    .await
    .unwrap();
    let rows = waiter_rows(&db).await;
    let id = db.insert(7, "+254712345678", "polled").await;
    let sent = eventually(Duration::from_secs(5), || async {
        db.status(id).await == "sent"
    })
    .await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!((listening, rows), (0, 0), "no LISTEN, no waiter row");
    assert!(sent, "sent by the poll");
    assert_eq!(received_ids(&provider).await, [id]);
}

/// The platform connects as a role of its own that may only INSERT into
/// `sms`: the trigger must still work for it (it runs with the rights of
/// smsrelay's role) and never make the platform's INSERT fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_by_a_platform_role_without_rights_on_sms_waiter_goes_through_and_notifies() {
    let Some(db) = postgres().await else { return };
    let role = format!("platform_{}", std::process::id());
    let setup = format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN;
         GRANT INSERT ON sms TO {role};
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup))
        .execute(pg(&db))
        .await
        .unwrap();
    let mut listener = listener(&db).await;
    mark_waiting(&db, "idle-instance").await;

    let options: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let mut platform = PgConnection::connect_with(&options.username(&role))
        .await
        .expect("connect as the platform's role");
    let inserted = sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message) VALUES (1, '+254712345678', 'from the platform')",
    )
    .execute(&mut platform)
    .await;
    platform.close().await.ok();
    let woken = notified(&mut listener, Duration::from_secs(2)).await;
    // The role name is ours (a number), not input.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE ALL ON sms FROM {role}; REVOKE ALL ON SCHEMA public FROM {role};
         REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}; DROP ROLE {role};"
    )))
    .execute(pg(&db))
    .await
    .unwrap();
    inserted.expect("the platform's INSERT goes through");
    assert!(woken, "the waiting instance is notified");
    assert_eq!(waiting(&db).await, 0, "the INSERT took the waiter's row");
}
