//! A deadline on every database call. A server behind a network partition
//! drops packets without a reset: a query on such a connection waits until
//! TCP gives up, many minutes later (sqlx has no TCP keepalive setting for
//! PostgreSQL). So each call (waiting for a connection, its statements, its
//! commit) gets `database.call_timeout`; a call that runs out counts as the
//! database being unavailable, and its connection is detached from the pool
//! and dropped instead of being returned, where sqlx would ping it first and
//! that ping would hang the same way.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::time::{Instant, timeout_at};

use super::StoreError;

/// Runs `work` on one connection of `pool`, all within `limit`.
pub(super) async fn call<DB: Database, T>(
    pool: &Pool<DB>,
    limit: Duration,
    work: impl AsyncFnOnce(&mut PoolConnection<DB>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let deadline = Instant::now() + limit;
    let conn = match timeout_at(deadline, pool.acquire()).await {
        Ok(conn) => conn?,
        Err(_) => return Err(StoreError::TimedOut(limit)),
    };
    let mut conn = Checkout(Some(conn));
    let result = match timeout_at(deadline, work(conn.get())).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::TimedOut(limit)),
    };
    if !result.as_ref().is_err_and(StoreError::discards_connection) {
        conn.give_back();
    }
    result
}

/// A connection checked out for one call. Dropped without [`Self::give_back`]
/// (the call timed out, or was itself cancelled mid-statement), it is never
/// reused: detached from the pool, which may open a replacement, and closed.
struct Checkout<DB: Database>(Option<PoolConnection<DB>>);

impl<DB: Database> Checkout<DB> {
    fn get(&mut self) -> &mut PoolConnection<DB> {
        // Present until give_back or drop, which both consume it.
        self.0.as_mut().expect("checked-out connection")
    }

    /// The call ended normally: back to the pool (unless the work asked for
    /// `close_on_drop`).
    fn give_back(mut self) {
        drop(self.0.take());
    }
}

impl<DB: Database> Drop for Checkout<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            // Dropping the raw connection closes its socket without a word to
            // the server, which may not be listening.
            drop(conn.detach());
        }
    }
}
