//! The store conformance suite: every store behaviour, written once and run
//! against SQLite, PostgreSQL and MariaDB/MySQL, each test on a fresh database.
//!
//! Each test is an `async fn name(db: TestStore)`; `conformance!(name, ...)`
//! turns it into one test per backend: `name::sqlite`, `name::postgres`,
//! `name::mysql` (so `tests/run.sh sqlite` runs the SQLite half). SQLite always runs;
//! the servers run when reachable, and must be under `CI=true`.

#[path = "../support/mod.rs"]
mod support;

#[path = "../support/backends.rs"]
mod backends;

/// Runs each named `async fn name(db: TestStore)` of the calling module on
/// every backend, as the tests `name::sqlite`, `name::postgres`, `name::mysql`.
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                use $crate::backends::{Backend, TestStore};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    if let Some(db) = TestStore::new(Backend::Sqlite).await {
                        super::$name(db).await
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(db) = TestStore::new(Backend::Postgres).await {
                        super::$name(db).await
                    }
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() {
                    if let Some(db) = TestStore::new(Backend::MySql).await {
                        super::$name(db).await
                    }
                }
            }
        )+
    };
}

mod attempt_rows;
mod claim;
mod concurrency;
mod daemon;
mod db_errors;
mod directory;
mod dispatch;
mod list;
mod opt_outs;
mod outcomes;
mod reports;
mod retention;
mod schema;
mod timeout;
mod unreadable;
mod wakeups;

use std::time::Duration;

use smsrelay::domain::{AttemptOutcome, NextState, Outcome};
use smsrelay::store::Claim;

/// An outcome as the dispatcher would record it.
pub fn outcome(id: i64, attempt: u32, next: NextState) -> Outcome {
    let (kind, http_status, error, reason) = match next {
        NextState::Sent => (
            AttemptOutcome::Accepted,
            Some(200),
            None,
            "accepted by provider test",
        ),
        NextState::Retry(_) => (
            AttemptOutcome::Transient,
            Some(503),
            Some("provider answered HTTP 503"),
            "provider answered HTTP 503; retry later",
        ),
        NextState::Declined => (
            AttemptOutcome::Permanent,
            Some(400),
            Some("provider refused the message: HTTP 400"),
            "provider refused the message: HTTP 400",
        ),
        NextState::Failed => (
            AttemptOutcome::Transient,
            Some(502),
            Some("provider answered HTTP 502"),
            "attempts exhausted after 8 sends: provider answered HTTP 502",
        ),
    };
    Outcome {
        id,
        attempt,
        outcome: kind,
        next,
        http_status,
        provider_message_id: matches!(next, NextState::Sent).then(|| format!("prov-{id}")),
        provider: Some("test".into()),
        error: error.map(str::to_owned),
        segments: matches!(next, NextState::Sent).then_some(1),
        reason: reason.to_owned(),
    }
}

/// The ids of a claim, ascending.
pub fn ids(claim: &Claim) -> Vec<i64> {
    let mut ids: Vec<i64> = claim.messages.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids
}

/// `|a - b| <= tolerance`, for times from two clocks or statements.
pub fn close(a: time::OffsetDateTime, b: time::OffsetDateTime, tolerance: Duration) -> bool {
    (a - b).abs() <= tolerance
}
