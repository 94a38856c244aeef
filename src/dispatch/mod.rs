//! The dispatcher, pipelined: claims keep the provider busy (a new claim as
//! send slots free up, with a bounded claim-ahead: `claimer`), sends run
//! `concurrency` at a time across claims (`sender`), outcomes are written
//! back continuously in groups (`recorder`), and every lease in hand is
//! renewed together each lease/3 (`lease`). No transaction or lock is held
//! across a provider call. What each attempt's end (refusal, provider
//! answer, interrupted or crashed send) means for the row is decided in one
//! place, `domain::outcome::settle` (`settle` logs it).

mod claimer;
pub mod heartbeat;
mod lease;
mod pipeline;
mod recorder;
mod sender;
pub mod settings;
mod settle;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::NextState;
use crate::domain::outcome::Guarantee;
use crate::domain::retry::RetryPolicy;
pub use crate::domain::validation::Rules;
use crate::provider::Provider;
use crate::store::{Store, StoreError};
use claimer::Mode;
use heartbeat::Heartbeat;
use pipeline::{Ctx, Ended};
pub use settings::{DispatchSettings, ValidationSettings};

/// How a dispatcher behaves, resolved from `[dispatch]` and `[validation]`
/// (see [`DispatchSettings::options`]).
#[derive(Debug, Clone)]
pub struct Options {
    pub instance: String,
    pub batch_size: u32,
    pub concurrency: u32,
    pub poll_interval: Duration,
    /// Watch for the platform's inserts (see [`crate::store::Schema::watch_inserts`]).
    pub wake_on_insert: bool,
    pub lease: Duration,
    pub retry: RetryPolicy,
    pub guarantee: Guarantee,
    pub shutdown_grace: Duration,
    pub rules: Rules,
    /// How often to feed the watchdog (a quarter of systemd's WatchdogSec).
    pub watchdog_every: Duration,
    /// The longest one step (a send, a database call) may take; a loop
    /// stuck longer stops feeding the watchdog.
    pub step_limit: Duration,
    /// The longest one database call may take (`database.call_timeout`).
    pub call_timeout: Duration,
}

/// What one claim-send-record cycle (`run_once`) did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub claimed: usize,
    pub expired: u64,
    pub sent: usize,
    pub retried: usize,
    pub declined: usize,
    pub failed: usize,
    /// Outcomes refused by the fence (the row was no longer ours).
    pub stale: u64,
    /// Claimed but not taken by the provider (shutdown began, the provider
    /// is paused or throttling); handed back to `pending` with the attempt undone.
    pub released: usize,
}

impl BatchReport {
    /// Adds an outcome to the count of the state it leads to, or a row handed back to `released`.
    fn count(&mut self, ended: &Ended) {
        match ended {
            Ended::Unsent(_) => self.released += 1,
            Ended::Outcome(o) => match o.next {
                NextState::Sent => self.sent += 1,
                NextState::Retry(_) => self.retried += 1,
                NextState::Declined => self.declined += 1,
                NextState::Failed => self.failed += 1,
            },
        }
    }
}

/// Claims and sends messages for one instance.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    options: Options,
    wake: Arc<Notify>,
    /// Whether the loop waits idle, for the insert watcher (see [`crate::store::Waiter`]).
    idle: watch::Sender<bool>,
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, provider: Arc<dyn Provider>, options: Options) -> Self {
        Self {
            store,
            provider,
            options,
            wake: Arc::new(Notify::new()),
            idle: watch::Sender::new(false),
        }
    }

    /// The validation rules applied before sending (the API applies them too).
    pub fn rules(&self) -> Rules {
        self.options.rules
    }

    /// A handle that makes the dispatcher look for work now instead of at its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `stop` is cancelled: claims, sends, records, and waits for
    /// work (`poll_interval`, or a wake-up). Database trouble is logged and
    /// retried with backoff; it never ends the loop. At shutdown no new claim
    /// is made, sends in flight get `shutdown_grace`, the unsent are handed
    /// back and the last group of outcomes is flushed.
    pub async fn run(&self, stop: CancellationToken, ping: impl Fn() + Sync) {
        let watcher = self.watch_inserts(&stop);
        let heartbeat = Heartbeat::new(&ping, self.options.watchdog_every, self.options.step_limit);
        let mut backoff = Duration::ZERO;
        while !stop.is_cancelled() {
            heartbeat.progress();
            match self.pipeline(&stop, &heartbeat, Mode::Continuous).await {
                Ok(_) => backoff = Duration::ZERO,
                // Only the last writes at shutdown can end up here; go round
                // (and end) after a pause in case it was not shutdown.
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?backoff, "dispatcher run failed; will retry");
                    let stopped = stop.cancelled();
                    heartbeat.wait(backoff, stopped).await;
                }
            }
        }
        drop(watcher);
    }

    /// Starts waking the loop on the platform's inserts, where the database
    /// can tell and `wake_on_insert` is on, until the guard is dropped.
    fn watch_inserts(&self, stop: &CancellationToken) -> tokio_util::sync::DropGuard {
        let watching = stop.child_token();
        if self.options.wake_on_insert {
            let (store, wake, token) = (self.store.clone(), self.wake.clone(), watching.clone());
            let (instance, idle) = (self.options.instance.clone(), self.idle.subscribe());
            tokio::spawn(async move {
                let waiter = crate::store::Waiter {
                    instance: &instance,
                    wake: &|| wake.notify_one(),
                    idle,
                };
                store.watch_inserts(waiter, &token).await;
            });
        }
        watching.drop_guard()
    }

    /// One cycle: one claim (of `batch_size`, one message for a provider
    /// probe, none for a paused provider), its sends, and every outcome
    /// recorded before it returns. Public for tests.
    pub async fn run_once(&self, stop: &CancellationToken) -> Result<BatchReport, StoreError> {
        let no_watchdog = || {};
        let heartbeat = Heartbeat::new(
            &no_watchdog,
            self.options.watchdog_every,
            self.options.step_limit,
        );
        self.pipeline(stop, &heartbeat, Mode::Once).await
    }

    #[tracing::instrument(skip_all, fields(instance = %self.options.instance), err)]
    async fn pipeline(
        &self,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        mode: Mode,
    ) -> Result<BatchReport, StoreError> {
        if stop.is_cancelled() {
            return Ok(BatchReport::default());
        }
        let ctx = Ctx::new(
            &self.store,
            &self.provider,
            &self.options,
            &self.wake,
            &self.idle,
            heartbeat,
            stop,
        );
        pipeline::run(&ctx, mode).await
    }
}
