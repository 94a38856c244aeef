//! Waking the dispatcher when the platform commits new messages, instead of
//! at its next poll. Polling stays on everywhere as the fallback: a
//! wake-up lost while a connection is being re-made only costs latency.
//!
//! - PostgreSQL: LISTEN on a connection of its own, and a NOTIFY only while
//!   a dispatcher waits idle (see `pg_wakeups`).
//! - SQLite: `PRAGMA data_version` on a dedicated connection changes when
//!   another connection commits a change to the file; reading it is a
//!   memory read, so it is checked every [`SQLITE_CHECK_EVERY`].
//! - MySQL/MariaDB: nothing comparable without a binlog client; they poll.

use std::convert::Infallible;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The dispatcher's side of [`super::Schema::watch_inserts`].
pub struct Waiter<'a> {
    /// Names this instance's row in `sms_waiter` (PostgreSQL).
    pub instance: &'a str,
    /// Makes the dispatcher claim now.
    pub wake: &'a (dyn Fn() + Send + Sync),
    /// `true` while the dispatcher waits idle: its last claim came back
    /// short and nothing is in flight. Set again after each such claim.
    pub idle: watch::Receiver<bool>,
}

/// How often SQLite's `data_version` is read.
pub(super) const SQLITE_CHECK_EVERY: Duration = Duration::from_millis(5);

/// How long to wait before connecting again after the watch connection failed.
pub(super) const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// Reads `PRAGMA data_version` on a connection of its own and wakes on every
/// change (a commit by any other connection, the platform's or ours).
pub(super) async fn watch_sqlite(
    connect: &SqliteConnectOptions,
    wake: &(dyn Fn() + Send + Sync),
    stop: &CancellationToken,
) {
    let mut warned = false;
    while !stop.is_cancelled() {
        let Err(e) = tokio::select! {
            result = watch_sqlite_once(connect, wake) => result,
            _ = stop.cancelled() => break,
        };
        if !std::mem::replace(&mut warned, true) {
            tracing::warn!(error = %e, "cannot watch the SQLite file for new messages; polling");
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            _ = stop.cancelled() => break,
        }
    }
}

/// Reads `data_version` until the connection fails.
async fn watch_sqlite_once(
    connect: &SqliteConnectOptions,
    wake: &(dyn Fn() + Send + Sync),
) -> Result<Infallible, sqlx::Error> {
    let mut connection = connect.connect().await?;
    let version = "PRAGMA data_version";
    let mut seen: i64 = sqlx::query_scalar(version)
        .fetch_one(&mut connection)
        .await?;
    wake();
    let mut tick = tokio::time::interval(SQLITE_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now: i64 = sqlx::query_scalar(version)
            .fetch_one(&mut connection)
            .await?;
        if now != seen {
            seen = now;
            wake();
        }
    }
}
