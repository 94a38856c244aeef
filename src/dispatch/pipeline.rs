//! One run of the pipelined dispatcher: claims, sends and records overlap.
//! Three loops share one task (so they can borrow the run's state; the sends
//! themselves are spawned): the send loop claims as slots free up and
//! collects finished sends, the recorder writes their outcomes back in
//! groups, and the renewer extends every lease in hand each lease/3. No
//! transaction or lock is held across a provider call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::Outcome;
use crate::domain::outcome::ReleaseReason;
use crate::provider::Provider;
use crate::store::{Store, StoreError};

use super::claimer::{self, Mode, Schedule, Triage};
use super::heartbeat::Heartbeat;
use super::lease::{self, InHand};
use super::recorder;
use super::sender::InFlight;
use super::{BatchReport, Options};

/// A claimed row the provider did not take: (id, attempt, why).
pub(super) type Unsent = (i64, u32, ReleaseReason);

/// What became of one claimed row before the recorder.
pub(super) enum Ended {
    Outcome(Outcome),
    Unsent(Unsent),
}

/// What the loops of one run share.
pub(super) struct Ctx<'a> {
    pub store: &'a Arc<dyn Store>,
    pub provider: &'a Arc<dyn Provider>,
    pub options: &'a Options,
    pub wake: &'a Notify,
    /// Whether the send loop waits idle (for the insert watcher).
    idle: &'a watch::Sender<bool>,
    pub heartbeat: &'a Heartbeat<'a>,
    pub stop: &'a CancellationToken,
    in_hand: Mutex<InHand>,
    /// The recorder let rows go: a claim may fit now.
    room: Notify,
    /// A write failed for good: claims back off.
    write_failed: AtomicBool,
    /// Held by each statement that waits for the row locks of rows in hand
    /// (outcomes, hand-backs, lease renewal): two of ours at once could lock
    /// the same rows in different orders and deadlock, which PostgreSQL
    /// breaks only after `deadlock_timeout` (1 s), while both wait.
    row_writes: tokio::sync::Mutex<()>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        store: &'a Arc<dyn Store>,
        provider: &'a Arc<dyn Provider>,
        options: &'a Options,
        wake: &'a Notify,
        idle: &'a watch::Sender<bool>,
        heartbeat: &'a Heartbeat<'a>,
        stop: &'a CancellationToken,
    ) -> Self {
        Ctx {
            store,
            provider,
            options,
            wake,
            idle,
            heartbeat,
            stop,
            in_hand: Mutex::new(InHand::new(options.lease)),
            room: Notify::new(),
            write_failed: AtomicBool::new(false),
            row_writes: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs `f` on the rows in hand (never across an await).
    pub fn in_hand<T>(&self, f: impl FnOnce(&mut InHand) -> T) -> T {
        f(&mut self.in_hand.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn room_freed(&self) {
        self.room.notify_one();
    }

    /// Waits until no other statement of ours is locking rows in hand.
    pub async fn row_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.row_writes.lock().await
    }

    /// After a claim: idle when it came back short with nothing in flight
    /// (said again each time, so the watcher can write its row again after
    /// a wake-up that found nothing), busy otherwise (said once).
    fn claimed(&self, idle: bool) {
        if idle {
            self.idle.send_replace(true);
        } else {
            self.idle
                .send_if_modified(|was| std::mem::replace(was, false));
        }
    }

    pub fn write_failed(&self) {
        self.write_failed.store(true, Ordering::Relaxed);
    }
}

/// Claims (once, or until `stop`), sends and records; returns when every
/// claimed row is recorded or handed back. A claim that fails ends a
/// `Mode::Once` run at once; in `Mode::Continuous` it is logged and claims
/// back off. A write that failed for good is returned after the run.
pub(super) async fn run(ctx: &Ctx<'_>, mode: Mode) -> Result<BatchReport, StoreError> {
    let (to_recorder, ended) = mpsc::unbounded_channel();
    let done = CancellationToken::new();
    let (sent, recorded, ()) = tokio::join!(
        send_loop(ctx, mode, to_recorder),
        async {
            let recorded = recorder::run(ctx, ended).await;
            done.cancel();
            recorded
        },
        lease::renew_every_third(ctx, &done),
    );
    let mut report = sent?;
    if let Some(e) = recorded.error {
        return Err(e);
    }
    report.stale = recorded.stale;
    Ok(report)
}

/// A claim with its triage, as one future: it runs while the send loop
/// keeps handing finished sends to the recorder.
type Claiming<'c> = Pin<Box<dyn Future<Output = (u32, Result<Triage, StoreError>)> + Send + 'c>>;

/// Claims as slots free up, starts the sends, and hands each end to the
/// recorder; ends when no more claims will be made, no claim is under way
/// and no send is in flight. A claim (two statements, then the opt-out
/// lookup) takes milliseconds: meanwhile finished sends keep flowing to the
/// recorder, so its rows leave our hands, and room for the next claim is
/// made, while the claim is under way.
async fn send_loop(
    ctx: &Ctx<'_>,
    mode: Mode,
    to_recorder: UnboundedSender<Ended>,
) -> Result<BatchReport, StoreError> {
    let o = ctx.options;
    let mut report = BatchReport::default();
    let mut in_flight = InFlight::new(o.concurrency);
    let mut schedule = Schedule::new(mode);
    let mut claiming: Option<Claiming<'_>> = None;
    let mut ticks = tokio::time::interval(ctx.heartbeat.every());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pass_on = |ended: Ended, report: &mut BatchReport| {
        report.count(&ended);
        // The recorder outlives this loop; a send error means it is gone already.
        let _ = to_recorder.send(ended);
    };
    loop {
        if ctx.write_failed.swap(false, Ordering::Relaxed) && mode == Mode::Continuous {
            schedule.failed();
        }
        if claiming.is_none() && !ctx.stop.is_cancelled() && schedule.is_due() {
            let in_hand = ctx.in_hand(|h| h.len());
            if let Some(size) = schedule.size(o, ctx.provider.readiness(), in_hand) {
                schedule.claim_started();
                claiming = Some(Box::pin(async move {
                    (size, claimer::claim_and_triage(ctx, size).await)
                }));
            }
        }
        if claiming.is_none()
            && in_flight.is_empty()
            && (ctx.stop.is_cancelled() || schedule.is_over())
        {
            return Ok(report);
        }
        let under_way = claiming.is_some();
        let poll = schedule.waiting_until().filter(|_| !under_way);
        let claim_done = async {
            match claiming.as_mut() {
                Some(claim) => claim.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            (size, claimed) = claim_done => {
                claiming = None;
                match claimed {
                    Ok(triage) => {
                        let got = triage.claimed;
                        schedule.found(got, size, o.poll_interval);
                        report.claimed += triage.claimed;
                        report.expired += triage.expired;
                        for ended in triage.settled {
                            pass_on(ended, &mut report);
                        }
                        for (sms, ready, key) in triage.to_send {
                            in_flight.start(ctx, sms, ready, key);
                        }
                        if mode == Mode::Continuous {
                            ctx.claimed(got < size as usize && in_flight.is_empty());
                        }
                    }
                    Err(e) if mode == Mode::Once => return Err(e),
                    Err(e) => {
                        let retry_in = schedule.failed();
                        tracing::warn!(error = %e, ?retry_in, "claim failed; will retry");
                    }
                }
            }
            ended = in_flight.next_end(ctx), if !in_flight.is_empty() => {
                if let Some(ended) = ended {
                    ctx.heartbeat.progress();
                    pass_on(ended, &mut report);
                }
            }
            // With nothing in flight or being claimed, shutdown ends the loop at its top.
            _ = ctx.stop.cancelled(), if in_flight.is_empty() && !under_way => {}
            _ = ctx.wake.notified(), if mode == Mode::Continuous => schedule.woken(),
            _ = ctx.room.notified() => {}
            _ = tokio::time::sleep_until(poll.unwrap_or_else(tokio::time::Instant::now)), if poll.is_some() => {}
            _ = ticks.tick() => ctx.heartbeat.pulse(!in_flight.is_empty() || under_way),
        }
    }
}
