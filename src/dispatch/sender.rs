//! The send tasks in flight, across claims: at most `concurrency` requests at
//! a time (one semaphore for the whole run, so a new claim's sends start as
//! slots free up), and what each task's end means for its row. Once shutdown
//! starts, sends in flight get `shutdown_grace`, then are interrupted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::domain::ClaimedSms;
use crate::domain::opt_out::OptOutKey;
use crate::domain::outcome::{AttemptEnd, Lost, ReleaseReason};
use crate::domain::validation::Ready;
use crate::provider::{OutboundSms, SentVia};
use crate::store::Store;

use super::pipeline::{Ctx, Ended};
use super::settle::settle;

/// The end of one send task.
enum TaskEnd {
    /// Shutdown began before the request started (waiting for a slot, or
    /// for the provider's rate limit).
    NotStarted,
    Done(crate::provider::SendOutcome),
}

/// The send tasks, and what each one carries: the claimed row, its segment
/// count, and the provider its request went to once started.
pub(super) struct InFlight {
    tasks: JoinSet<TaskEnd>,
    rows: HashMap<tokio::task::Id, (ClaimedSms, u32, Arc<SentVia>)>,
    permits: Arc<Semaphore>,
    /// When the shutdown grace ends, once shutdown began.
    grace_ends: Option<Instant>,
}

impl InFlight {
    pub fn new(concurrency: u32) -> Self {
        InFlight {
            tasks: JoinSet::new(),
            rows: HashMap::new(),
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            grace_ends: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Starts one send task; it waits for a concurrency slot first.
    pub fn start(&mut self, ctx: &Ctx<'_>, sms: ClaimedSms, ready: Ready, opt_out_key: OptOutKey) {
        let provider = ctx.provider.clone();
        let store = ctx.store.clone();
        let permits = self.permits.clone();
        let stop = ctx.stop.clone();
        let (id, attempt, message, send_key, segments) = (
            sms.id,
            sms.attempt,
            sms.message.clone(),
            sms.send_key.clone(),
            ready.segments,
        );
        let via = Arc::new(SentVia::default());
        let sent_via = via.clone();
        let handle = self.tasks.spawn(async move {
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
        self.rows.insert(handle.id(), (sms, segments, via));
    }

    /// The end of the next send to finish, settled; `None` when none is in
    /// flight. Cancel-safe: nothing is lost if another branch of a `select!` wins.
    pub async fn next_end(&mut self, ctx: &Ctx<'_>) -> Option<Ended> {
        loop {
            let joined = match self.join_next(ctx).await? {
                Ok((task_id, end)) => (task_id, Ok(end)),
                Err(e) => (e.id(), Err(e)),
            };
            let (task_id, end) = joined;
            let Some((sms, segments, via)) = self.rows.remove(&task_id) else {
                continue;
            };
            return Some(settle_end(ctx, sms, segments, &via, end));
        }
    }

    /// The next finished task. Starts the shutdown grace period when `stop`
    /// fires, and interrupts what is still in flight when it runs out.
    async fn join_next(
        &mut self,
        ctx: &Ctx<'_>,
    ) -> Option<Result<(tokio::task::Id, TaskEnd), JoinError>> {
        loop {
            match self.grace_ends {
                None => tokio::select! {
                    joined = self.tasks.join_next_with_id() => return joined,
                    _ = ctx.stop.cancelled() => {
                        self.grace_ends = Some(Instant::now() + ctx.options.shutdown_grace);
                    }
                },
                Some(at) => match tokio::time::timeout_at(at, self.tasks.join_next_with_id()).await
                {
                    Ok(joined) => return joined,
                    Err(_) => {
                        tracing::warn!(
                            count = self.tasks.len(),
                            "shutdown grace elapsed; interrupting sends still in flight"
                        );
                        self.tasks.abort_all();
                        // Aborted tasks end at once; this only bounds the wait for them.
                        self.grace_ends = Some(Instant::now() + Duration::from_secs(3600));
                    }
                },
            }
        }
    }
}

/// What the end of one send task means for its row: an outcome to record,
/// or a row to hand back unspent.
fn settle_end(
    ctx: &Ctx<'_>,
    sms: ClaimedSms,
    segments: u32,
    via: &SentVia,
    end: Result<TaskEnd, JoinError>,
) -> Ended {
    let provider = via.provider();
    let end = match (end, provider.as_deref()) {
        // Shutdown came before the request started.
        (Ok(TaskEnd::NotStarted), _) | (Err(_), None) => {
            return Ended::Unsent((sms.id, sms.attempt, ReleaseReason::Shutdown));
        }
        (Ok(TaskEnd::Done(answer)), provider) => match answer.unspent() {
            // Held back, or refused as a whole (our configuration, a 429).
            Some(why) => return Ended::Unsent((sms.id, sms.attempt, why)),
            None => AttemptEnd::Answered {
                provider: provider.unwrap_or(ctx.provider.name()),
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
    Ended::Outcome(settle(ctx.options, &sms, end))
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
