//! Group commit: outcomes are written back continuously, a group at a time
//! (whatever arrived within `GROUP_WAIT` of the group's first, at most
//! `batch_size`), by one `record_outcomes` call; rows the provider did not
//! take are handed back in the same flush, one `release` per reason. One
//! slow send never holds up the others' outcomes, and what is sent but not
//! recorded stays within the sends in flight plus one group.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use crate::domain::Outcome;
use crate::domain::outcome::ReleaseReason;
use crate::store::{RecordReport, StoreError};

use super::lease::Row;
use super::pipeline::{Ctx, Ended, Unsent};

/// How long a group waits for more outcomes after its first arrived.
const GROUP_WAIT: Duration = Duration::from_millis(3);

/// What the recorder did over a run.
#[derive(Default)]
pub(super) struct Recorded {
    /// Outcomes refused by the fence (the row was no longer ours).
    pub stale: u64,
    /// The first write that failed for good (its rows are left to the reaper).
    pub error: Option<StoreError>,
}

/// One group: outcomes to record and rows to hand back.
#[derive(Default)]
struct Group {
    outcomes: Vec<Outcome>,
    unsent: Vec<Unsent>,
}

impl Group {
    fn push(&mut self, ended: Ended) {
        match ended {
            Ended::Outcome(o) => self.outcomes.push(o),
            Ended::Unsent(u) => self.unsent.push(u),
        }
    }

    fn len(&self) -> usize {
        self.outcomes.len() + self.unsent.len()
    }
}

/// Records everything `ended` brings, a group at a time, until the senders
/// are done (the channel closes) and the last group is flushed.
pub(super) async fn run(ctx: &Ctx<'_>, mut ended: UnboundedReceiver<Ended>) -> Recorded {
    let mut recorded = Recorded::default();
    let most = ctx.options.batch_size as usize;
    while let Some(first) = ended.recv().await {
        let mut group = Group::default();
        group.push(first);
        let full = tokio::time::sleep_until(Instant::now() + GROUP_WAIT);
        tokio::pin!(full);
        while group.len() < most {
            tokio::select! {
                next = ended.recv() => match next {
                    Some(next) => group.push(next),
                    None => break,
                },
                _ = &mut full => break,
            }
        }
        flush(ctx, group, &mut recorded).await;
    }
    recorded
}

/// Writes one group; its rows leave our hands whatever becomes of the write.
async fn flush(ctx: &Ctx<'_>, group: Group, recorded: &mut Recorded) {
    if !group.outcomes.is_empty() {
        let rows: Vec<Row> = group.outcomes.iter().map(|o| (o.id, o.attempt)).collect();
        match record(ctx, &rows, &group.outcomes).await {
            Ok(stale) => recorded.stale += stale,
            Err(e) => failed(ctx, recorded, e, "outcomes not recorded", rows.len()),
        }
        ctx.in_hand(|h| h.forget(&rows));
    }
    for why in [
        ReleaseReason::Shutdown,
        ReleaseReason::ProviderPaused,
        ReleaseReason::Throttled,
        ReleaseReason::OptOutsUnread,
    ] {
        let rows: Vec<Row> = group
            .unsent
            .iter()
            .filter(|(_, _, w)| *w == why)
            .map(|(id, attempt, _)| (*id, *attempt))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let instance = &ctx.options.instance;
        match with_db_retry(ctx, &rows, "release unsent", || {
            ctx.store.release(instance, &rows, why)
        })
        .await
        {
            Ok(released) => tracing::info!(
                released,
                reason = why.event_reason(),
                "claimed messages handed back to pending, attempt not spent"
            ),
            Err(e) => failed(
                ctx,
                recorded,
                e,
                "unsent messages not handed back",
                rows.len(),
            ),
        }
        ctx.in_hand(|h| h.forget(&rows));
    }
    ctx.room_freed();
}

/// A write failed for good: the reaper returns its rows once their lease
/// runs out (they may be sent again); claims back off meanwhile.
fn failed(ctx: &Ctx<'_>, recorded: &mut Recorded, e: StoreError, what: &str, rows: usize) {
    tracing::warn!(error = %e, rows, "{what}; the reaper will return these rows once their lease runs out");
    ctx.write_failed();
    recorded.error.get_or_insert(e);
}

/// Writes the outcomes in one fenced write; returns how many the fence refused.
async fn record(ctx: &Ctx<'_>, rows: &[Row], outcomes: &[Outcome]) -> Result<u64, StoreError> {
    for o in outcomes {
        metrics::counter!("smsrelay_sends_total", "outcome" => o.outcome.as_str()).increment(1);
    }
    let instance = &ctx.options.instance;
    let recorded = match with_db_retry(ctx, rows, "record outcomes", || {
        ctx.store.record_outcomes(instance, outcomes)
    })
    .await
    {
        Err(e) if e.is_refused_value() => {
            tracing::warn!(error = %e, count = outcomes.len(), "the database refused a value in a group of outcomes; recording them one by one");
            record_one_by_one(ctx, outcomes).await?
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
/// group: only the outcome holding that value is affected, and it is
/// recorded without the provider's values rather than lost.
async fn record_one_by_one(
    ctx: &Ctx<'_>,
    outcomes: &[Outcome],
) -> Result<RecordReport, StoreError> {
    let instance = &ctx.options.instance;
    let mut total = RecordReport::default();
    for o in outcomes {
        let row = [(o.id, o.attempt)];
        let one = std::slice::from_ref(o);
        let recorded = match with_db_retry(ctx, &row, "record an outcome", || {
            ctx.store.record_outcomes(instance, one)
        })
        .await
        {
            Err(e) if e.is_refused_value() => {
                tracing::warn!(sms_id = o.id, attempt = o.attempt, error = %e, "the database refused a value of this outcome; recording it without the provider's message id and error text");
                let bare = [o.without_provider_values()];
                with_db_retry(ctx, &row, "record an outcome", || {
                    ctx.store.record_outcomes(instance, &bare)
                })
                .await?
            }
            other => other?,
        };
        ctx.in_hand(|h| h.forget(&row));
        total.applied += recorded.applied;
        total.stale += recorded.stale;
    }
    Ok(total)
}

/// Retries a database write for `rows` through anything that can pass (an
/// outage, a lock wait, a deadlock, a timed-out call, a server read-only
/// after failover): the provider has already answered, so giving up would
/// lose the outcome. The leases are renewed meanwhile (every lease/3, by the
/// renewer). Gives up when the lease of any of `rows` is nearly over (less
/// than one database call left: another instance may take it over), or once
/// shutdown has begun and the grace period is over; the lease reaper then
/// recovers the rows.
async fn with_db_retry<T, F, Fut>(
    ctx: &Ctx<'_>,
    rows: &[Row],
    what: &str,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let o = ctx.options;
    let margin = o.call_timeout.min(o.lease / 3);
    // Never waits longer than a renewal interval between two tries.
    let longest_wait = Duration::from_secs(10).min(o.lease / 3);
    let mut wait = Duration::from_millis(100).min(longest_wait);
    let mut give_up_at: Option<Instant> = None;
    loop {
        let tried = ctx.heartbeat.during(async {
            let _one_at_a_time = ctx.row_writes().await;
            op().await
        });
        let e = match tried.await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_transient() => e,
            Err(e) => return Err(e),
        };
        if ctx.stop.is_cancelled() {
            let at = *give_up_at.get_or_insert_with(|| Instant::now() + o.shutdown_grace);
            if Instant::now() >= at {
                return Err(e);
            }
        }
        tracing::warn!(error = %e, retry_in = ?wait, "{what} failed; retrying");
        ctx.heartbeat.wait(wait, std::future::pending::<()>()).await;
        if ctx.in_hand(|h| h.nearly_over(rows, margin)) {
            tracing::warn!(error = %e, rows = rows.len(), "{what} failed and the lease is nearly over; giving up: the reaper will return these rows (they may be sent again)");
            return Err(e);
        }
        wait = (wait * 2).min(longest_wait);
    }
}
