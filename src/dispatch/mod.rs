//! The dispatcher: claim a batch -> validate -> send with bounded concurrency
//! -> record every outcome in one fenced write. No transaction or lock is held
//! across a provider call. What each attempt's end (refusal, provider answer,
//! interrupted or crashed send) means for the row is decided in one place,
//! `domain::outcome::settle`; this module only runs the cycle, logs and records.

pub mod heartbeat;
mod lease;
pub mod settings;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::opt_out::OptOutKey;
use crate::domain::outcome::{self, AttemptEnd, Guarantee, Lost, ReleaseReason};
use crate::domain::phone::mask;
use crate::domain::retry::RetryPolicy;
pub use crate::domain::validation::Rules;
use crate::domain::validation::{self, Ready};
use crate::domain::{AttemptOutcome, ClaimedSms, NextState, Outcome};
use crate::provider::{OutboundSms, Provider, Readiness, SendOutcome, SentVia};
use crate::store::{Claim, RecordReport, Store, StoreError};
use heartbeat::Heartbeat;
use lease::BatchLease;
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

/// What one claim-send-record cycle did.
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
    /// Adds each outcome to the count of the state it leads to.
    fn count(&mut self, outcomes: &[Outcome]) {
        for o in outcomes {
            match o.next {
                NextState::Sent => self.sent += 1,
                NextState::Retry(_) => self.retried += 1,
                NextState::Declined => self.declined += 1,
                NextState::Failed => self.failed += 1,
            }
        }
    }
}

/// Claims and sends messages for one instance.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    options: Options,
    wake: Arc<Notify>,
}

/// A claimed row the provider did not take: (id, attempt, why).
type Unsent = (i64, u32, ReleaseReason);

/// The send tasks of one batch, and what each one carries: the claimed row,
/// its segment count, and the provider its request went to once started.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<TaskEnd>,
    rows: HashMap<tokio::task::Id, (ClaimedSms, u32, Arc<SentVia>)>,
}

/// The end of one send task.
enum TaskEnd {
    /// Shutdown began before the request started (waiting for a slot, or
    /// for the provider's rate limit).
    NotStarted,
    Done(SendOutcome),
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, provider: Arc<dyn Provider>, options: Options) -> Self {
        Self {
            store,
            provider,
            options,
            wake: Arc::new(Notify::new()),
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

    /// Runs until `stop` is cancelled: claims, sends, records, and waits for work.
    /// Database trouble is logged and retried with backoff; it never ends the loop.
    pub async fn run(&self, stop: CancellationToken, ping: impl Fn() + Sync) {
        let watcher = self.watch_inserts(&stop);
        let heartbeat = Heartbeat::new(&ping, self.options.watchdog_every, self.options.step_limit);
        let mut backoff = Duration::ZERO;
        while !stop.is_cancelled() {
            heartbeat.progress();
            match self.cycle(&stop, &heartbeat).await {
                Ok(report) => {
                    backoff = Duration::ZERO;
                    // A full batch suggests more is due: go again at once.
                    if report.claimed < self.options.batch_size as usize {
                        self.idle(&stop, &heartbeat, self.options.poll_interval)
                            .await;
                    }
                }
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?backoff, "dispatcher cycle failed; will retry");
                    self.idle(&stop, &heartbeat, backoff).await;
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
            tokio::spawn(async move {
                store.watch_inserts(&|| wake.notify_one(), &token).await;
            });
        }
        watching.drop_guard()
    }

    /// Waits for work, a wake-up or shutdown, feeding the watchdog meanwhile.
    async fn idle(&self, stop: &CancellationToken, heartbeat: &Heartbeat<'_>, wait: Duration) {
        let woken = async {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = self.wake.notified() => {}
            }
        };
        heartbeat.wait(wait, woken).await;
    }

    /// One cycle: claim a batch, send it, record the outcomes. Public for tests.
    pub async fn run_once(&self, stop: &CancellationToken) -> Result<BatchReport, StoreError> {
        let no_watchdog = || {};
        let heartbeat = Heartbeat::new(
            &no_watchdog,
            self.options.watchdog_every,
            self.options.step_limit,
        );
        self.cycle(stop, &heartbeat).await
    }

    #[tracing::instrument(skip_all, fields(instance = %self.options.instance), err)]
    async fn cycle(
        &self,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
    ) -> Result<BatchReport, StoreError> {
        if stop.is_cancelled() {
            return Ok(BatchReport::default());
        }
        // A paused provider would take nothing: leave the backlog unclaimed,
        // and claim one message for the probe that ends a pause.
        let batch_size = match self.provider.readiness() {
            Readiness::Ready => self.options.batch_size,
            Readiness::ProbeOnly => 1,
            Readiness::Paused(_) => return Ok(BatchReport::default()),
        };
        let claimed_at = Instant::now();
        let claim = heartbeat.during(self.claim(batch_size)).await?;
        let mut report = BatchReport {
            claimed: claim.messages.len(),
            expired: claim.expired,
            ..BatchReport::default()
        };
        if claim.messages.is_empty() {
            return Ok(report);
        }
        let rows = claim.messages.iter().map(|m| (m.id, m.attempt)).collect();
        let mut lease = BatchLease::claimed(rows, self.options.lease, claimed_at);
        let (outcomes, unsent) = self
            .send_batch(claim.messages, stop, heartbeat, &mut lease)
            .await;
        report.count(&outcomes);
        report.stale = self.record(stop, heartbeat, &mut lease, &outcomes).await?;
        let unsent_rows: Vec<(i64, u32)> = unsent.iter().map(|(id, a, _)| (*id, *a)).collect();
        lease.keep_only(&unsent_rows);
        report.released = self
            .release_unsent(stop, heartbeat, &mut lease, &unsent)
            .await?;
        Ok(report)
    }

    /// Claims the next batch under our lease.
    async fn claim(&self, batch_size: u32) -> Result<Claim, StoreError> {
        let o = &self.options;
        let claim = self.store.claim(&o.instance, batch_size, o.lease).await?;
        if claim.expired > 0 {
            tracing::info!(
                count = claim.expired,
                "pending messages expired before sending"
            );
        }
        if !claim.messages.is_empty() {
            tracing::debug!(count = claim.messages.len(), "claimed batch");
            metrics::histogram!("smsrelay_claim_batch_size").record(claim.messages.len() as f64);
        }
        Ok(claim)
    }

    /// Validates and sends every claimed message, at most `concurrency` at a
    /// time. Returns one outcome per message that was refused or answered,
    /// and the (id, attempt, why) of those the provider did not take.
    async fn send_batch(
        &self,
        messages: Vec<ClaimedSms>,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        lease: &mut BatchLease,
    ) -> (Vec<Outcome>, Vec<Unsent>) {
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut in_flight = InFlight::default();
        let permits = Arc::new(Semaphore::new(self.options.concurrency as usize));
        let mut valid = Vec::with_capacity(messages.len());
        for sms in messages {
            match validation::validate(&sms, &self.options.rules) {
                Ok(ready) => valid.push((sms, ready)),
                Err(refusal) => outcomes.push(self.settle(
                    &sms,
                    AttemptEnd::Refused {
                        reason: refusal.reason,
                        segments: refusal.segments,
                    },
                )),
            }
        }
        // Recipients who unsubscribed are declined before any request.
        let keys: Vec<OptOutKey> = valid.iter().map(|(_, r)| OptOutKey::of(&r.to)).collect();
        let opted_out = match heartbeat.during(opted_out_among(&*self.store, &keys)).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the opt-out list; the batch goes back to pending");
                let unsent = valid
                    .iter()
                    .map(|(m, _)| (m.id, m.attempt, ReleaseReason::OptOutsUnread))
                    .collect();
                return (outcomes, unsent);
            }
        };
        for ((sms, ready), key) in valid.into_iter().zip(keys) {
            if opted_out.contains(&key) {
                let segments = ready.segments;
                outcomes.push(self.settle(&sms, AttemptEnd::OptedOut { segments }));
            } else {
                self.spawn_send(&mut in_flight, sms, ready, key, &permits, stop);
            }
        }
        let mut unsent = Vec::new();
        self.collect(
            in_flight,
            lease,
            stop,
            heartbeat,
            &mut outcomes,
            &mut unsent,
        )
        .await;
        (outcomes, unsent)
    }

    /// Starts one send task; it waits for a concurrency permit first.
    fn spawn_send(
        &self,
        in_flight: &mut InFlight,
        sms: ClaimedSms,
        ready: Ready,
        opt_out_key: OptOutKey,
        permits: &Arc<Semaphore>,
        stop: &CancellationToken,
    ) {
        let provider = self.provider.clone();
        let store = self.store.clone();
        let permits = permits.clone();
        let stop = stop.clone();
        let (id, attempt, message, send_key, segments) = (
            sms.id,
            sms.attempt,
            sms.message.clone(),
            sms.send_key.clone(),
            ready.segments,
        );
        let via = Arc::new(SentVia::default());
        let sent_via = via.clone();
        let handle = in_flight.tasks.spawn(async move {
            // Waiting for a slot is abandoned at shutdown; a started request is not.
            let _permit = tokio::select! {
                biased;
                _ = stop.cancelled() => return TaskEnd::NotStarted,
                permit = permits.acquire_owned() => permit,
            };
            let outbound = OutboundSms {
                id,
                attempt,
                to: &ready.to,
                message: &message,
                segments,
                send_key: &send_key,
            };
            let started = std::time::Instant::now();
            let send = provider.send_via(&outbound, &sent_via);
            tokio::pin!(send);
            let answer = tokio::select! {
                answer = &mut send => answer,
                // Still held back by the provider's limits: give up the wait.
                // A request already under way is let finish (the grace period).
                _ = stop.cancelled() => {
                    if sent_via.provider().is_none() {
                        return TaskEnd::NotStarted;
                    }
                    send.await
                }
            };
            metrics::histogram!("smsrelay_send_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            if answer.is_opted_out() {
                let via = sent_via.provider();
                let name = via.as_deref().unwrap_or(provider.name());
                record_opt_out(&*store, &opt_out_key, name, id).await;
            }
            TaskEnd::Done(answer)
        });
        in_flight.rows.insert(handle.id(), (sms, segments, via));
    }

    /// Waits for every send task and settles each one, renewing the lease of
    /// the whole batch (finished sends are not recorded yet either) every
    /// lease/3 meanwhile. Once shutdown starts, sends in flight get
    /// `shutdown_grace`, then are interrupted.
    async fn collect(
        &self,
        mut in_flight: InFlight,
        lease: &mut BatchLease,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        outcomes: &mut Vec<Outcome>,
        unsent: &mut Vec<Unsent>,
    ) {
        let mut deadline: Option<Instant> = None;
        loop {
            if lease.is_due() {
                self.renew(heartbeat, lease).await;
            }
            // Each finished send is progress; none within provider.timeout means a
            // stuck loop. Waiting for the next one is cancel-safe, so a renewal may cut in.
            let joined = tokio::select! {
                joined = heartbeat.during(self.join_next(&mut in_flight.tasks, &mut deadline, stop)) => joined,
                _ = tokio::time::sleep_until(lease.renew_at()) => continue,
            };
            let Some(joined) = joined else { break };
            let (task_id, end) = match joined {
                Ok((task_id, end)) => (task_id, Ok(end)),
                Err(e) => (e.id(), Err(e)),
            };
            let Some((sms, segments, via)) = in_flight.rows.remove(&task_id) else {
                continue;
            };
            let provider = via.provider();
            let end = match (end, provider.as_deref()) {
                // Shutdown came before the request started.
                (Ok(TaskEnd::NotStarted), _) | (Err(_), None) => {
                    unsent.push((sms.id, sms.attempt, ReleaseReason::Shutdown));
                    continue;
                }
                (Ok(TaskEnd::Done(answer)), provider) => match answer.unspent() {
                    // Held back, or refused as a whole (our configuration, a 429).
                    Some(why) => {
                        unsent.push((sms.id, sms.attempt, why));
                        continue;
                    }
                    None => AttemptEnd::Answered {
                        provider: provider.unwrap_or(self.provider.name()),
                        segments,
                        answer,
                    },
                },
                (Err(e), Some(provider)) => AttemptEnd::Lost {
                    provider,
                    segments,
                    cause: if e.is_cancelled() {
                        Lost::Interrupted
                    } else {
                        Lost::Crashed
                    },
                },
            };
            outcomes.push(self.settle(&sms, end));
        }
    }

    /// Extends the lease of the batch's rows still ours in one fenced
    /// statement (bounded by `database.call_timeout`). A failure is logged and
    /// left to the next renewal; a row the fence refused was taken over by
    /// another instance, and its outcome will be refused as stale.
    async fn renew(&self, heartbeat: &Heartbeat<'_>, lease: &mut BatchLease) {
        let o = &self.options;
        let rows = lease.rows();
        if !rows.is_empty() {
            let started = Instant::now();
            match heartbeat
                .during(self.store.renew(&o.instance, rows, o.lease))
                .await
            {
                Ok(renewed) => {
                    if renewed < rows.len() as u64 {
                        metrics::counter!("smsrelay_leases_lost_total")
                            .increment(rows.len() as u64 - renewed);
                        tracing::warn!(
                            renewed,
                            in_flight = rows.len(),
                            "some leases could not be renewed: those rows were taken over by another instance"
                        );
                    }
                    lease.renewed(started);
                }
                Err(e) => tracing::warn!(error = %e, "lease renewal failed; will retry"),
            }
        }
        lease.reschedule();
    }

    /// The next finished send task; `None` when all are done. Starts the
    /// shutdown grace period when `stop` fires, and interrupts what is still
    /// in flight when it runs out.
    async fn join_next(
        &self,
        tasks: &mut JoinSet<TaskEnd>,
        deadline: &mut Option<Instant>,
        stop: &CancellationToken,
    ) -> Option<Result<(tokio::task::Id, TaskEnd), JoinError>> {
        loop {
            match *deadline {
                None => tokio::select! {
                    joined = tasks.join_next_with_id() => return joined,
                    _ = stop.cancelled() => {
                        *deadline = Some(Instant::now() + self.options.shutdown_grace);
                    }
                },
                Some(at) => match tokio::time::timeout_at(at, tasks.join_next_with_id()).await {
                    Ok(joined) => return joined,
                    Err(_) => {
                        tracing::warn!(
                            count = tasks.len(),
                            "shutdown grace elapsed; interrupting sends still in flight"
                        );
                        tasks.abort_all();
                        // Aborted tasks end at once; this only bounds the wait for them.
                        *deadline = Some(Instant::now() + Duration::from_secs(3600));
                    }
                },
            }
        }
    }

    /// Applies the outcome model to one attempt and logs what it decided.
    fn settle(&self, sms: &ClaimedSms, end: AttemptEnd<'_>) -> Outcome {
        let rules = outcome::Rules {
            retry: &self.options.retry,
            guarantee: self.options.guarantee,
        };
        let outcome = outcome::settle(sms, end, rules, rand::random::<f64>());
        log_outcome(sms, &outcome);
        outcome
    }

    /// Writes the outcomes in one fenced write; returns how many the fence refused.
    async fn record(
        &self,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        lease: &mut BatchLease,
        outcomes: &[Outcome],
    ) -> Result<u64, StoreError> {
        for o in outcomes {
            metrics::counter!("smsrelay_sends_total", "outcome" => o.outcome.as_str()).increment(1);
        }
        let instance = &self.options.instance;
        let recorded = match self
            .with_db_retry(stop, heartbeat, lease, "record outcomes", || {
                self.store.record_outcomes(instance, outcomes)
            })
            .await
        {
            Err(e) if e.is_refused_value() => {
                tracing::warn!(error = %e, count = outcomes.len(), "the database refused a value in a batch of outcomes; recording them one by one");
                self.record_one_by_one(stop, heartbeat, lease, outcomes)
                    .await?
            }
            other => other?,
        };
        if recorded.stale > 0 {
            metrics::counter!("smsrelay_stale_writes_total").increment(recorded.stale);
            tracing::warn!(
                stale = recorded.stale,
                "outcomes not recorded: the rows were no longer leased to this instance (lease expired and reclaimed, or an earlier try of this write that timed out landed after all); they may be sent twice"
            );
        }
        Ok(recorded.stale)
    }

    /// Records each outcome alone, after the database refused a value of the
    /// batch: only the outcome holding that value is affected, and it is
    /// recorded without the provider's values rather than lost.
    async fn record_one_by_one(
        &self,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        lease: &mut BatchLease,
        outcomes: &[Outcome],
    ) -> Result<RecordReport, StoreError> {
        let instance = &self.options.instance;
        let mut total = RecordReport::default();
        for o in outcomes {
            let one = std::slice::from_ref(o);
            let recorded = match self
                .with_db_retry(stop, heartbeat, lease, "record an outcome", || {
                    self.store.record_outcomes(instance, one)
                })
                .await
            {
                Err(e) if e.is_refused_value() => {
                    tracing::warn!(sms_id = o.id, attempt = o.attempt, error = %e, "the database refused a value of this outcome; recording it without the provider's message id and error text");
                    let bare = [o.without_provider_values()];
                    self.with_db_retry(stop, heartbeat, lease, "record an outcome", || {
                        self.store.record_outcomes(instance, &bare)
                    })
                    .await?
                }
                other => other?,
            };
            lease.forget((o.id, o.attempt));
            total.applied += recorded.applied;
            total.stale += recorded.stale;
        }
        Ok(total)
    }

    /// Hands rows the provider did not take back to `pending`, one write per
    /// reason; returns how many.
    async fn release_unsent(
        &self,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        lease: &mut BatchLease,
        unsent: &[Unsent],
    ) -> Result<usize, StoreError> {
        let instance = &self.options.instance;
        for why in [
            ReleaseReason::Shutdown,
            ReleaseReason::ProviderPaused,
            ReleaseReason::Throttled,
            ReleaseReason::OptOutsUnread,
        ] {
            let rows: Vec<(i64, u32)> = unsent
                .iter()
                .filter(|(_, _, w)| *w == why)
                .map(|(id, attempt, _)| (*id, *attempt))
                .collect();
            if rows.is_empty() {
                continue;
            }
            let released = self
                .with_db_retry(stop, heartbeat, lease, "release unsent", || {
                    self.store.release(instance, &rows, why)
                })
                .await?;
            tracing::info!(
                released,
                reason = why.event_reason(),
                "claimed messages handed back to pending, attempt not spent"
            );
        }
        Ok(unsent.len())
    }

    /// Retries a database write for the batch under `lease` through anything
    /// that can pass (an outage, a lock wait, a deadlock, a timed-out call,
    /// a server read-only after failover): the provider has already answered,
    /// so giving up would lose the outcome. The lease is renewed while the
    /// write waits. Gives up when the lease is nearly over (less than one
    /// database call left: another instance may take the rows over), or once
    /// shutdown has begun and the grace period is over; the lease reaper then
    /// recovers the rows.
    async fn with_db_retry<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        heartbeat: &Heartbeat<'_>,
        lease: &mut BatchLease,
        what: &str,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let margin = self.options.call_timeout.min(self.options.lease / 3);
        // Never waits longer than a renewal interval between two tries.
        let longest_wait = Duration::from_secs(10).min(self.options.lease / 3);
        let mut wait = Duration::from_millis(100).min(longest_wait);
        let mut give_up_at: Option<Instant> = None;
        loop {
            let e = match heartbeat.during(op()).await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            if stop.is_cancelled() {
                let at =
                    *give_up_at.get_or_insert_with(|| Instant::now() + self.options.shutdown_grace);
                if Instant::now() >= at {
                    return Err(e);
                }
            }
            tracing::warn!(error = %e, retry_in = ?wait, "{what} failed; retrying");
            self.wait_renewing(heartbeat, lease, wait).await;
            if lease.nearly_over(margin) {
                tracing::warn!(error = %e, rows = lease.rows().len(), "{what} failed and the lease is nearly over; giving up: the reaper will return these rows (they may be sent again)");
                return Err(e);
            }
            wait = (wait * 2).min(longest_wait);
        }
    }

    /// Waits `wait`, renewing the lease whenever a renewal is due.
    async fn wait_renewing(
        &self,
        heartbeat: &Heartbeat<'_>,
        lease: &mut BatchLease,
        wait: Duration,
    ) {
        let until = Instant::now() + wait;
        loop {
            if lease.is_due() {
                self.renew(heartbeat, lease).await;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            let slice = until.min(lease.renew_at()).saturating_duration_since(now);
            heartbeat.wait(slice, std::future::pending::<()>()).await;
        }
    }
}

/// One log line per decision worth an operator's attention (an accepted send is not).
/// Which of `keys` are on the opt-out list (no query for none).
async fn opted_out_among(
    store: &dyn Store,
    keys: &[OptOutKey],
) -> Result<HashSet<OptOutKey>, StoreError> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(store.opted_out(keys).await?.into_iter().collect())
}

/// Puts a number a provider called unsubscribed on the opt-out list. A
/// failure is only logged: the message is declined all the same, and the
/// provider will say so again for the next one.
async fn record_opt_out(store: &dyn Store, key: &OptOutKey, provider: &str, sms_id: i64) {
    match store.record_opt_out(key, provider, sms_id).await {
        Ok(true) => tracing::info!(
            sms_id,
            provider,
            "recipient opted out; later messages to the number will be declined"
        ),
        Ok(false) => {}
        Err(e) => tracing::warn!(sms_id, error = %e, "could not record the opt-out"),
    }
}

fn log_outcome(sms: &ClaimedSms, o: &Outcome) {
    let error = o.error.as_deref().unwrap_or_default();
    match (o.outcome, o.next) {
        (AttemptOutcome::Invalid, _) => {
            tracing::info!(sms_id = sms.id, to = %mask(&sms.mobile_no), reason = error, "declined before sending");
        }
        (_, NextState::Declined) => {
            tracing::info!(sms_id = sms.id, attempt = sms.attempt, to = %mask(&sms.mobile_no), error, "declined by provider");
        }
        (AttemptOutcome::Unknown, NextState::Retry(after)) => {
            tracing::warn!(sms_id = sms.id, attempt = sms.attempt, error, retry_in = ?after, "the provider may have this message; sending again (at-least-once)");
        }
        (_, NextState::Retry(after)) => {
            tracing::info!(sms_id = sms.id, attempt = sms.attempt, error, retry_in = ?after, "transient failure; will retry");
        }
        (_, NextState::Failed) if error.starts_with("outcome unknown") => {
            tracing::warn!(
                sms_id = sms.id,
                attempt = sms.attempt,
                error,
                "the provider may have this message; failed without resending (at-most-once)"
            );
        }
        (_, NextState::Failed) => {
            tracing::warn!(
                sms_id = sms.id,
                attempt = sms.attempt,
                error,
                "attempts exhausted"
            );
        }
        (_, NextState::Sent) => {}
    }
}
