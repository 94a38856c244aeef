//! The dispatcher: claim a batch -> validate -> send with bounded concurrency
//! -> record every outcome in one fenced write. No transaction or lock is held
//! across a provider call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::phone::mask;
use crate::domain::retry::{RetryDecision, RetryPolicy};
use crate::domain::validation;
pub use crate::domain::validation::Rules;
use crate::domain::{AttemptOutcome, ClaimedSms, NextState, Outcome};
use crate::provider::{OutboundSms, Provider, SendOutcome};
use crate::store::{Store, StoreError};

/// How often the heartbeat runs during a cycle (the unit's WatchdogSec is 30s).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How a dispatcher behaves; built from `[dispatch]` and `[validation]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub instance: String,
    pub batch_size: u32,
    pub concurrency: u32,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub retry: RetryPolicy,
    pub shutdown_grace: Duration,
    pub rules: Rules,
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
    /// Claimed but never sent because shutdown began; handed back to `pending`.
    pub released: usize,
}

/// Claims and sends messages for one instance.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    provider: Arc<dyn Provider>,
    settings: Settings,
    wake: Arc<Notify>,
}

/// The end of one send task.
enum TaskEnd {
    /// Shutdown began before the request started.
    NotStarted,
    Done(SendOutcome),
}

impl Dispatcher {
    pub fn new(store: Arc<dyn Store>, provider: Arc<dyn Provider>, settings: Settings) -> Self {
        Self {
            store,
            provider,
            settings,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The validation rules applied before sending (the API applies them too).
    pub fn rules(&self) -> Rules {
        self.settings.rules
    }

    /// A handle that makes the dispatcher look for work now instead of at its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Runs until `stop` is cancelled: claims, sends, records, and waits for work.
    /// Database trouble is logged and retried with backoff; it never ends the loop.
    pub async fn run(&self, stop: CancellationToken, heartbeat: impl Fn()) {
        let mut backoff = Duration::ZERO;
        while !stop.is_cancelled() {
            heartbeat();
            // Keep the systemd watchdog fed while a long batch is in flight
            // (sends are bounded by provider.timeout, database calls by connect_timeout).
            let cycle = self.run_once(&stop);
            tokio::pin!(cycle);
            let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
            let result = loop {
                tokio::select! {
                    result = &mut cycle => break result,
                    _ = ticks.tick() => heartbeat(),
                }
            };
            match result {
                Ok(report) => {
                    backoff = Duration::ZERO;
                    // A full batch suggests more is due: go again at once.
                    if report.claimed < self.settings.batch_size as usize {
                        self.idle(&stop, self.settings.poll_interval).await;
                    }
                }
                Err(e) => {
                    backoff =
                        (backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
                    tracing::warn!(error = %e, retry_in = ?backoff, "dispatcher cycle failed; will retry");
                    self.idle(&stop, backoff).await;
                }
            }
        }
    }

    async fn idle(&self, stop: &CancellationToken, wait: Duration) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// One cycle: claim a batch, send it, record the outcomes. Public for tests.
    #[tracing::instrument(skip_all, fields(instance = %self.settings.instance), err)]
    pub async fn run_once(&self, stop: &CancellationToken) -> Result<BatchReport, StoreError> {
        if stop.is_cancelled() {
            return Ok(BatchReport::default());
        }
        let s = &self.settings;
        let claim = self.store.claim(&s.instance, s.batch_size, s.lease).await?;
        let mut report = BatchReport {
            claimed: claim.messages.len(),
            expired: claim.expired,
            ..BatchReport::default()
        };
        if claim.expired > 0 {
            tracing::info!(
                count = claim.expired,
                "pending messages expired before sending"
            );
        }
        if claim.messages.is_empty() {
            return Ok(report);
        }
        tracing::debug!(count = claim.messages.len(), "claimed batch");
        metrics::histogram!("smsrelay_claim_batch_size").record(claim.messages.len() as f64);

        let mut outcomes = Vec::with_capacity(claim.messages.len());
        let mut unsent = Vec::new();
        let mut tasks = JoinSet::new();
        // What each send task carries: the claimed row and its segment count.
        let mut in_flight: HashMap<tokio::task::Id, (ClaimedSms, u32)> = HashMap::new();
        let permits = Arc::new(Semaphore::new(s.concurrency as usize));

        for sms in claim.messages {
            let ready = match validation::validate(&sms, &s.rules) {
                Ok(ready) => ready,
                Err(refusal) => {
                    tracing::info!(sms_id = sms.id, to = %mask(&sms.mobile_no), reason = %refusal.reason, "declined before sending");
                    outcomes.push(Outcome {
                        id: sms.id,
                        attempt: sms.attempt,
                        outcome: AttemptOutcome::Invalid,
                        next: NextState::Declined,
                        http_status: None,
                        provider_message_id: None,
                        error: Some(refusal.reason.clone()),
                        segments: refusal.segments,
                        reason: format!("invalid: {}", refusal.reason),
                    });
                    continue;
                }
            };
            let provider = self.provider.clone();
            let permits = permits.clone();
            let stop = stop.clone();
            let (id, attempt, message, segments) =
                (sms.id, sms.attempt, sms.message.clone(), ready.segments);
            let handle = tasks.spawn(async move {
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
                    segments: ready.segments,
                };
                let started = std::time::Instant::now();
                let result = provider.send(&outbound).await;
                metrics::histogram!("smsrelay_send_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                TaskEnd::Done(result)
            });
            in_flight.insert(handle.id(), (sms, segments));
        }

        // Collect results; once shutdown starts, in-flight sends get `shutdown_grace`.
        let mut deadline: Option<Instant> = None;
        loop {
            let joined = match deadline {
                None => tokio::select! {
                    joined = tasks.join_next_with_id() => joined,
                    _ = stop.cancelled() => {
                        deadline = Some(Instant::now() + s.shutdown_grace);
                        continue;
                    }
                },
                Some(at) => match tokio::time::timeout_at(at, tasks.join_next_with_id()).await {
                    Ok(joined) => joined,
                    Err(_) => {
                        tracing::warn!(
                            count = tasks.len(),
                            "shutdown grace elapsed; interrupting sends still in flight"
                        );
                        tasks.abort_all();
                        deadline = Some(Instant::now() + Duration::from_secs(3600));
                        continue;
                    }
                },
            };
            let Some(joined) = joined else { break };
            let (task_id, end) = match joined {
                Ok((task_id, end)) => (task_id, Ok(end)),
                Err(e) => (e.id(), Err(e)),
            };
            let Some((sms, segments)) = in_flight.remove(&task_id) else {
                continue;
            };
            match end {
                Ok(TaskEnd::NotStarted) => unsent.push((sms.id, sms.attempt)),
                Ok(TaskEnd::Done(result)) => outcomes.push(self.decide(&sms, segments, result)),
                Err(e) => {
                    let (outcome, error) = if e.is_cancelled() {
                        (
                            AttemptOutcome::Interrupted,
                            "interrupted by shutdown; the provider may have received it".to_owned(),
                        )
                    } else {
                        (
                            AttemptOutcome::Transient,
                            "send task failed unexpectedly".to_owned(),
                        )
                    };
                    let mut o = self.decide(
                        &sms,
                        segments,
                        SendOutcome::Transient {
                            error,
                            http_status: None,
                            retry_after: None,
                        },
                    );
                    o.outcome = outcome;
                    outcomes.push(o);
                }
            }
        }

        for o in &outcomes {
            metrics::counter!("smsrelay_sends_total", "outcome" => o.outcome.as_str()).increment(1);
            match o.next {
                NextState::Sent => report.sent += 1,
                NextState::Retry(_) => report.retried += 1,
                NextState::Declined => report.declined += 1,
                NextState::Failed => report.failed += 1,
            }
        }
        let recorded = self
            .with_db_retry(stop, "record outcomes", || {
                self.store.record_outcomes(&s.instance, &outcomes)
            })
            .await?;
        report.stale = recorded.stale;
        if recorded.stale > 0 {
            metrics::counter!("smsrelay_stale_writes_total").increment(recorded.stale);
            tracing::warn!(
                stale = recorded.stale,
                "outcomes not recorded: the rows were no longer leased to this instance (lease expired and reclaimed?); they may be sent twice"
            );
        }
        if !unsent.is_empty() {
            report.released = unsent.len();
            let released = self
                .with_db_retry(stop, "release unsent", || {
                    self.store.release(&s.instance, &unsent)
                })
                .await?;
            tracing::info!(released, "claimed messages handed back unsent at shutdown");
        }
        Ok(report)
    }

    /// Turns a provider's answer into the next state, applying the retry policy.
    fn decide(&self, sms: &ClaimedSms, segments: u32, result: SendOutcome) -> Outcome {
        let base = Outcome {
            id: sms.id,
            attempt: sms.attempt,
            outcome: AttemptOutcome::Accepted,
            next: NextState::Sent,
            http_status: None,
            provider_message_id: None,
            error: None,
            segments: Some(segments),
            reason: String::new(),
        };
        match result {
            SendOutcome::Accepted {
                provider_message_id,
                http_status,
            } => Outcome {
                http_status,
                provider_message_id,
                reason: format!("accepted by provider {}", self.provider.name()),
                ..base
            },
            SendOutcome::Permanent { error, http_status } => {
                tracing::info!(sms_id = sms.id, attempt = sms.attempt, to = %mask(&sms.mobile_no), %error, "declined by provider");
                Outcome {
                    outcome: AttemptOutcome::Permanent,
                    next: NextState::Declined,
                    http_status,
                    reason: error.clone(),
                    error: Some(error),
                    ..base
                }
            }
            SendOutcome::Transient {
                error,
                http_status,
                retry_after,
            } => {
                let jitter = rand::random::<f64>();
                match self
                    .settings
                    .retry
                    .after_transient(sms.attempt, jitter, retry_after)
                {
                    RetryDecision::RetryAfter(after) => {
                        tracing::info!(sms_id = sms.id, attempt = sms.attempt, %error, retry_in = ?after, "transient failure; will retry");
                        Outcome {
                            outcome: AttemptOutcome::Transient,
                            next: NextState::Retry(after),
                            http_status,
                            reason: format!(
                                "{error}; retry in {}",
                                humantime::format_duration(round_to_millis(after))
                            ),
                            error: Some(error),
                            ..base
                        }
                    }
                    RetryDecision::GiveUp => {
                        tracing::warn!(sms_id = sms.id, attempt = sms.attempt, %error, "attempts exhausted");
                        Outcome {
                            outcome: AttemptOutcome::Transient,
                            next: NextState::Failed,
                            http_status,
                            reason: format!(
                                "attempts exhausted after {} sends: {error}",
                                sms.attempt
                            ),
                            error: Some(error),
                            ..base
                        }
                    }
                }
            }
        }
    }

    /// Retries a database write through an outage: the provider has already
    /// answered, so giving up would lose the outcome. Gives up only once
    /// shutdown has begun and the grace period is over; the lease reaper then
    /// recovers the rows.
    async fn with_db_retry<T, F, Fut>(
        &self,
        stop: &CancellationToken,
        what: &str,
        mut op: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut wait = Duration::from_millis(100);
        let mut give_up_at: Option<Instant> = None;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => {
                    if stop.is_cancelled() {
                        let at = *give_up_at
                            .get_or_insert_with(|| Instant::now() + self.settings.shutdown_grace);
                        if Instant::now() >= at {
                            return Err(e);
                        }
                    }
                    tracing::warn!(error = %e, retry_in = ?wait, "{what} failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
