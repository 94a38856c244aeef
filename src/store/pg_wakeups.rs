//! PostgreSQL wake-ups: LISTEN on a connection of its own for the NOTIFY of
//! migration 0012's trigger, which fires only while some instance has a row
//! in `sms_waiter`. This instance writes its row while its dispatcher waits
//! idle; the first INSERT that finds it takes it (sets it to `-infinity`)
//! and notifies. When the dispatcher is busy again the row is left alone:
//! the next INSERT takes it (one NOTIFY, and a wake-up that only brings the
//! next claim forward), which is cheaper than a write at the start of every
//! busy spell under load; it is not written again until the dispatcher waits
//! again. The row is removed here at shutdown.
//!
//! Never blocks the platform: its trigger skips a row locked here, and here a
//! row locked by an inserter (who is about to notify) is skipped too.
//! A wake-up can still be missed when an INSERT's trigger runs just before
//! the row is written and its transaction commits after the claim that
//! follows the write; the poll covers that, as it covers a lost connection.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wakeups::{RECONNECT_AFTER, Waiter};
use super::{StoreError, deadline};

/// The trigger's channel (migration 0012).
const CHANNEL: &str = "smsrelay_sms";

/// How long a written row counts. Only bounds the row of an instance that
/// died waiting (the next INSERT takes it anyway); a live one refreshes it.
const WAITING_FOR: Duration = Duration::from_secs(60);
const REFRESH_EVERY: Duration = Duration::from_secs(20);

/// Writes (or refreshes) this instance's row; counts 0 when an inserter holds
/// it (it is taking the row and will notify as it commits). An UPDATE of a
/// column no index covers: HOT, the row stays on its page (see migration
/// 0012). Rows of instances that wrote none for a day are swept on the way.
/// $1 = instance, $2 = milliseconds the row counts.
const MARK: &str = "
WITH mine AS (
    SELECT instance FROM sms_waiter WHERE instance = $1 FOR UPDATE SKIP LOCKED
),
refreshed AS (
    UPDATE sms_waiter w
    SET waiting_until = now() + $2::bigint * interval '1 millisecond', marked_at = now()
    FROM mine WHERE w.instance = mine.instance
    RETURNING 1
),
added AS (
    INSERT INTO sms_waiter (instance, waiting_until)
    SELECT $1, now() + $2::bigint * interval '1 millisecond'
    WHERE NOT EXISTS (SELECT 1 FROM sms_waiter WHERE instance = $1)
    ON CONFLICT DO NOTHING
    RETURNING 1
),
swept AS (
    DELETE FROM sms_waiter WHERE instance IN (
        SELECT instance FROM sms_waiter
        WHERE marked_at < now() - interval '1 day' AND instance <> $1
        FOR UPDATE SKIP LOCKED)
)
SELECT (SELECT count(*) FROM refreshed) + (SELECT count(*) FROM added)";

/// Removes this instance's row at shutdown, unless an inserter holds it. $1 = instance.
const UNMARK: &str = "
DELETE FROM sms_waiter WHERE instance IN (
    SELECT instance FROM sms_waiter WHERE instance = $1 FOR UPDATE SKIP LOCKED)";

/// What the listening and the marking halves share.
struct Shared {
    /// LISTEN is in place: a written row will be answered.
    listening: AtomicBool,
    /// The row is gone (a notification: the trigger took it), or unknown
    /// (the listening connection was re-made).
    row_gone: Notify,
}

/// LISTENs and wakes on each notification; writes this instance's row while
/// `waiter.idle`. Until `stop`, then removes the row.
pub(super) async fn watch(
    pool: &PgPool,
    call_timeout: Duration,
    waiter: Waiter<'_>,
    stop: &CancellationToken,
) {
    let shared = Shared {
        listening: AtomicBool::new(false),
        row_gone: Notify::new(),
    };
    let Waiter {
        instance,
        wake,
        idle,
    } = waiter;
    let db = Db {
        pool,
        call_timeout,
        instance,
    };
    tokio::join!(
        listen(pool, wake, &shared, stop),
        mark_while_idle(&db, wake, idle, &shared, stop),
    );
}

/// Keeps a LISTEN in place, reconnecting after [`RECONNECT_AFTER`]; warns once per outage.
async fn listen(
    pool: &PgPool,
    wake: &(dyn Fn() + Send + Sync),
    shared: &Shared,
    stop: &CancellationToken,
) {
    // A pool of one apart from the dispatcher's: this connection is held for good.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(RECONNECT_AFTER.max(Duration::from_secs(5)))
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    let mut warned = false;
    while !stop.is_cancelled() {
        let Err(e) = tokio::select! {
            result = listen_once(&own, wake, shared) => result,
            _ = stop.cancelled() => break,
        };
        let was_listening = shared.listening.swap(false, Ordering::Relaxed);
        if was_listening || !std::mem::replace(&mut warned, true) {
            tracing::warn!(error = %e, "cannot LISTEN for new messages on PostgreSQL; polling until it can");
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            _ = stop.cancelled() => break,
        }
    }
    shared.listening.store(false, Ordering::Relaxed);
}

/// LISTENs until the connection fails for good (sqlx re-makes it once on its own).
async fn listen_once(
    pool: &PgPool,
    wake: &(dyn Fn() + Send + Sync),
    shared: &Shared,
) -> Result<Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    shared.listening.store(true, Ordering::Relaxed);
    loop {
        // Started listening, a notification, or the connection re-made (a
        // notification may have been lost): the row is gone or unknown, and
        // the dispatcher should look. `row_gone` first, so the marking half
        // sees it before the dispatcher's next idle.
        shared.row_gone.notify_one();
        wake();
        listener.try_recv().await?;
    }
}

/// Follows the dispatcher's idle flag: a row while it waits (refreshed each
/// [`REFRESH_EVERY`]; each write is followed by a wake-up so it claims once
/// more: an INSERT that committed just before the row was written found no
/// one to notify). Takes the row away at the end.
async fn mark_while_idle(
    db: &Db<'_>,
    wake: &(dyn Fn() + Send + Sync),
    mut idle: watch::Receiver<bool>,
    shared: &Shared,
    stop: &CancellationToken,
) {
    let mut marked_at: Option<Instant> = None;
    let mut warned = false;
    loop {
        // Refreshed only while waiting; a busy dispatcher's row may lapse.
        let refresh_at = marked_at
            .filter(|_| *idle.borrow())
            .map(|at| at + REFRESH_EVERY);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = shared.row_gone.notified() => {
                marked_at = None;
                continue;
            }
            changed = idle.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(refresh_at.unwrap_or_else(Instant::now)), if refresh_at.is_some() => {}
        }
        let waiting = *idle.borrow_and_update() && shared.listening.load(Ordering::Relaxed);
        let result = match (waiting, marked_at) {
            (false, _) => Ok(()),
            (true, Some(at)) if at.elapsed() < REFRESH_EVERY => Ok(()),
            (true, _) => db.mark().await.map(|marked| {
                // Not marked: an inserter holds the row and notifies as it commits.
                marked_at = marked.then(Instant::now);
                if marked {
                    wake();
                }
            }),
        };
        if let Err(e) = result {
            marked_at = None;
            if !std::mem::replace(&mut warned, true) {
                tracing::warn!(error = %e, "cannot write sms_waiter for wake-ups; polling");
            }
        }
    }
    // Whether or not a row is known to be there (one statement at shutdown).
    let _ = db.unmark().await;
}

/// This instance's row in `sms_waiter`.
struct Db<'a> {
    pool: &'a PgPool,
    call_timeout: Duration,
    instance: &'a str,
}

impl Db<'_> {
    /// Writes the row; `false` when an inserter holds it.
    async fn mark(&self) -> Result<bool, StoreError> {
        let until = i64::try_from(WAITING_FOR.as_millis()).unwrap_or(i64::MAX);
        let n: i64 = deadline::call(self.pool, self.call_timeout, async |conn| {
            Ok(sqlx::query_scalar(MARK)
                .bind(self.instance)
                .bind(until)
                .fetch_one(&mut **conn)
                .await?)
        })
        .await?;
        Ok(n > 0)
    }

    async fn unmark(&self) -> Result<(), StoreError> {
        deadline::call(self.pool, self.call_timeout, async |conn| {
            sqlx::query(UNMARK)
                .bind(self.instance)
                .execute(&mut **conn)
                .await?;
            Ok(())
        })
        .await
    }
}
