//! When to claim and how much, and what to do with a claim before any
//! request: validation refusals and opt-outs are settled at once, the rest
//! goes to the senders.
//!
//! Claim-ahead is bounded: at most `concurrency + batch_size` rows are in
//! hand (claimed, not yet recorded or handed back). A claim is made as soon
//! as `min(batch_size, concurrency)` rows fit (so claims stay large enough to
//! be cheap) or when nothing is in hand, not after a whole batch is back.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::ClaimedSms;
use crate::domain::opt_out::OptOutKey;
use crate::domain::outcome::{AttemptEnd, ReleaseReason};
use crate::domain::validation::{self, Ready};
use crate::provider::Readiness;
use crate::store::{Claim, Store, StoreError};

use super::Options;
use super::pipeline::{Ctx, Ended};
use super::settle::settle;

/// Whether the run claims until shutdown or just once (`run_once`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Once,
    Continuous,
}

/// The first poll after a claim that found rows but not a full batch: more
/// are likely to follow soon (where no wake-up says so: MySQL/MariaDB, or
/// PostgreSQL with `wake_on_insert = false`). Doubles per empty claim up to
/// `poll_interval`: 5, 10, 20 ... 640 ms, so about 8 extra empty claims (a
/// statement or two each) after the last row of a busy spell.
pub(super) const QUICK_POLL: Duration = Duration::from_millis(5);

/// When the next claim may be made.
pub(super) struct Schedule {
    mode: Mode,
    /// The next claim waits for this (a poll that found less than asked, or backoff).
    next_at: Instant,
    /// No claim before this, wake-up or not: the database failed.
    backoff_until: Instant,
    backoff: Duration,
    /// The wait after the last empty claim: [`QUICK_POLL`] after rows were
    /// found, doubling up to `poll_interval` while claims come back empty.
    idle_poll: Duration,
    /// A wake-up came while a claim was under way: that claim's snapshot may
    /// predate the new row, so the next claim must not wait for the poll.
    woken_since_claim: bool,
    /// `Mode::Once`: the one claim was made (or the paused provider skipped it).
    over: bool,
}

impl Schedule {
    pub fn new(mode: Mode) -> Self {
        let now = Instant::now();
        Schedule {
            mode,
            next_at: now,
            backoff_until: now,
            backoff: Duration::ZERO,
            // Nothing found yet: the first empty claim waits `poll_interval`.
            idle_poll: Duration::MAX,
            woken_since_claim: false,
            over: false,
        }
    }

    /// No more claims will be made (`Mode::Once` after its claim).
    pub fn is_over(&self) -> bool {
        self.over
    }

    pub fn is_due(&self) -> bool {
        !self.over && Instant::now() >= self.next_at
    }

    /// When the next claim is due, if it is in the future.
    pub fn waiting_until(&self) -> Option<Instant> {
        (!self.over && self.next_at > Instant::now()).then_some(self.next_at)
    }

    /// A wake-up (the platform inserted, or `waker()`): look now, unless backing off.
    pub fn woken(&mut self) {
        self.next_at = self.backoff_until.max(Instant::now());
        self.woken_since_claim = true;
    }

    /// A claim begins: wake-ups before this are answered by it.
    pub fn claim_started(&mut self) {
        self.woken_since_claim = false;
    }

    /// How many rows to claim now, if any, with `in_hand` rows in hand.
    /// A paused provider claims nothing until the next poll; one that takes
    /// only a probe gets one message, when nothing else is in hand.
    pub fn size(&mut self, options: &Options, readiness: Readiness, in_hand: usize) -> Option<u32> {
        match readiness {
            Readiness::Paused(_) => {
                self.found(0, 1, options.poll_interval);
                None
            }
            Readiness::ProbeOnly => (in_hand == 0).then_some(1),
            Readiness::Ready => {
                let cap = options.concurrency as usize + options.batch_size as usize;
                let room = cap.saturating_sub(in_hand);
                let worth_it = (options.batch_size.min(options.concurrency)) as usize;
                let limit = room.min(options.batch_size as usize);
                (in_hand == 0 || room >= worth_it).then_some(limit as u32)
            }
        }
    }

    /// A claim asked for `asked` rows and got `got`. Fewer than asked means
    /// nothing more is due: wait for the poll or a wake-up, the poll soon
    /// after rows were found (see [`QUICK_POLL`]).
    pub fn found(&mut self, got: usize, asked: u32, poll_interval: Duration) {
        self.backoff = Duration::ZERO;
        self.idle_poll = if got > 0 {
            QUICK_POLL
        } else {
            self.idle_poll.saturating_mul(2)
        }
        .min(poll_interval);
        let now = Instant::now();
        let woken = std::mem::replace(&mut self.woken_since_claim, false);
        self.next_at = if got < asked as usize && !woken {
            now + self.idle_poll
        } else {
            now
        };
        self.over = self.mode == Mode::Once;
    }

    /// The database failed (a claim, or a write): back off before claiming again.
    pub fn failed(&mut self) -> Duration {
        self.backoff =
            (self.backoff * 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
        self.backoff_until = Instant::now() + self.backoff;
        self.next_at = self.backoff_until;
        self.over = self.mode == Mode::Once;
        self.backoff
    }
}

/// Claims up to `batch_size` rows under our lease, and puts them in hand.
async fn claim(ctx: &Ctx<'_>, batch_size: u32) -> Result<Claim, StoreError> {
    let o = ctx.options;
    let claimed_at = Instant::now();
    let claim = ctx
        .heartbeat
        .during(ctx.store.claim(&o.instance, batch_size, o.lease))
        .await?;
    ctx.in_hand(|h| h.claimed(claim.messages.iter().map(|m| (m.id, m.attempt)), claimed_at));
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

/// Claims up to `size` rows and sorts them (see [`triage`]).
pub(super) async fn claim_and_triage(ctx: &Ctx<'_>, size: u32) -> Result<Triage, StoreError> {
    let claim = claim(ctx, size).await?;
    let claimed = claim.messages.len();
    let mut sorted = triage(ctx, claim.messages).await;
    sorted.claimed = claimed;
    sorted.expired = claim.expired;
    Ok(sorted)
}

/// A claim sorted before any request.
#[derive(Default)]
pub(super) struct Triage {
    /// Rows the claim took.
    pub claimed: usize,
    /// Pending rows the claim's sweep found expired.
    pub expired: u64,
    /// Refused by validation, or to a recipient who opted out; or handed
    /// back because the opt-out list could not be read.
    pub settled: Vec<Ended>,
    pub to_send: Vec<(ClaimedSms, Ready, OptOutKey)>,
}

/// Validates the claimed messages and looks their recipients up on the
/// opt-out list (one query per claim).
async fn triage(ctx: &Ctx<'_>, messages: Vec<ClaimedSms>) -> Triage {
    let mut triage = Triage::default();
    let mut valid = Vec::with_capacity(messages.len());
    for sms in messages {
        match validation::validate(&sms, &ctx.options.rules) {
            Ok(ready) => valid.push((sms, ready)),
            Err(refusal) => {
                let end = AttemptEnd::Refused {
                    reason: refusal.reason,
                    segments: refusal.segments,
                };
                triage
                    .settled
                    .push(Ended::Outcome(settle(ctx.options, &sms, end)));
            }
        }
    }
    let keys: Vec<OptOutKey> = valid.iter().map(|(_, r)| OptOutKey::of(&r.to)).collect();
    let opted_out = match ctx
        .heartbeat
        .during(opted_out_among(&**ctx.store, &keys))
        .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the opt-out list; the claim goes back to pending");
            let unsent = valid
                .iter()
                .map(|(m, _)| Ended::Unsent((m.id, m.attempt, ReleaseReason::OptOutsUnread)));
            triage.settled.extend(unsent);
            return triage;
        }
    };
    for ((sms, ready), key) in valid.into_iter().zip(keys) {
        if opted_out.contains(&key) {
            let segments = ready.segments;
            let end = AttemptEnd::OptedOut { segments };
            triage
                .settled
                .push(Ended::Outcome(settle(ctx.options, &sms, end)));
        } else {
            triage.to_send.push((sms, ready, key));
        }
    }
    triage
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// How long the schedule waits after a claim of `asked` that got `got`.
    fn wait_after(schedule: &mut Schedule, got: usize, asked: u32, poll: Duration) -> Duration {
        schedule.found(got, asked, poll);
        schedule.next_at.saturating_duration_since(Instant::now())
    }

    fn about(wait: Duration, expected: Duration) -> bool {
        wait <= expected && wait + Duration::from_millis(2) >= expected
    }

    #[test]
    fn empty_claims_poll_at_the_interval_until_rows_are_found_then_back_off_from_5ms() {
        let poll = Duration::from_secs(1);
        let mut schedule = Schedule::new(Mode::Continuous);
        assert!(about(wait_after(&mut schedule, 0, 64, poll), poll));
        assert_eq!(wait_after(&mut schedule, 64, 64, poll), Duration::ZERO);
        assert!(about(wait_after(&mut schedule, 3, 64, poll), QUICK_POLL));
        let mut expected = QUICK_POLL;
        for _ in 0..12 {
            expected = (expected * 2).min(poll);
            assert!(about(wait_after(&mut schedule, 0, 64, poll), expected));
        }
        assert!(
            about(wait_after(&mut schedule, 0, 64, poll), poll),
            "capped at poll_interval"
        );
        assert!(about(wait_after(&mut schedule, 1, 64, poll), QUICK_POLL));
    }

    #[test]
    fn a_wake_up_during_a_claim_brings_the_next_claim_forward() {
        let poll = Duration::from_secs(1);
        let mut schedule = Schedule::new(Mode::Continuous);
        schedule.woken();
        schedule.claim_started();
        assert!(
            about(wait_after(&mut schedule, 0, 64, poll), poll),
            "answered by that claim"
        );
        schedule.claim_started();
        schedule.woken();
        assert_eq!(wait_after(&mut schedule, 0, 64, poll), Duration::ZERO);
    }

    #[test]
    fn a_poll_interval_under_5ms_stays_the_bound() {
        let poll = Duration::from_millis(2);
        let mut schedule = Schedule::new(Mode::Continuous);
        assert!(wait_after(&mut schedule, 1, 64, poll) <= poll);
    }
}
