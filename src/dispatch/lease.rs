//! The leases of every row in hand (claimed, not yet recorded or handed
//! back). All of them are renewed together every lease/3 by one statement,
//! and the dispatcher keeps, per row and on its own clock, until when each
//! surely holds: a write retried through an outage stops before another
//! instance may take its rows over.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pipeline::Ctx;

/// A row under our lease: `(id, attempt)`.
pub(super) type Row = (i64, u32);

/// The rows in hand, each with the time its lease surely holds until.
pub(super) struct InHand {
    held_until: HashMap<Row, Instant>,
    lease: Duration,
}

impl InHand {
    pub fn new(lease: Duration) -> Self {
        InHand {
            held_until: HashMap::new(),
            lease,
        }
    }

    /// `rows` were claimed by a call that started at `claimed_at`: the
    /// database set their expiry later than `claimed_at + lease`.
    pub fn claimed(&mut self, rows: impl IntoIterator<Item = Row>, claimed_at: Instant) {
        let until = claimed_at + self.lease;
        self.held_until
            .extend(rows.into_iter().map(|row| (row, until)));
    }

    pub fn len(&self) -> usize {
        self.held_until.len()
    }

    /// Every row still ours to renew.
    pub fn rows(&self) -> Vec<Row> {
        self.held_until.keys().copied().collect()
    }

    /// A renewal of `rows` that started at `started` succeeded.
    pub fn renewed(&mut self, rows: &[Row], started: Instant) {
        let until = started + self.lease;
        for row in rows {
            if let Some(held) = self.held_until.get_mut(row) {
                *held = (*held).max(until);
            }
        }
    }

    /// Whether less than `margin` is left of the lease of any of `rows`: a
    /// write started now might land after another instance took it over.
    pub fn nearly_over(&self, rows: &[Row], margin: Duration) -> bool {
        let now = Instant::now();
        rows.iter()
            .filter_map(|row| self.held_until.get(row))
            .any(|held| now + margin >= *held)
    }

    /// `rows` were recorded, handed back, or given up: no longer ours to renew.
    pub fn forget<'r>(&mut self, rows: impl IntoIterator<Item = &'r Row>) {
        for row in rows {
            self.held_until.remove(row);
        }
    }
}

/// Renews every row in hand every lease/3 (a third, so two renewals may
/// fail before another instance may take over), until `done`. A failed
/// renewal is tried again soon (from 100 ms, doubling, at most lease/3): it
/// may have hit the moment a retried write of ours held the same rows
/// locked, and waiting a whole third each time could fall into step with
/// those retries until the lease runs out. A row the fence refused was
/// taken over by another instance, and its outcome will be refused as stale.
pub(super) async fn renew_every_third(ctx: &Ctx<'_>, done: &CancellationToken) {
    let o = ctx.options;
    let every = o.lease / 3;
    let first_retry = Duration::from_millis(100).min(every);
    // Zero while renewals succeed; else the wait before the next try.
    let mut retry = Duration::ZERO;
    loop {
        let next = if retry.is_zero() { every } else { retry };
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
        }
        // The rows are read once no write of ours holds them: an outcome
        // group that was under way has been recorded and its rows let go,
        // so they are not mistaken for rows another instance took over.
        let renewal = ctx.heartbeat.during(async {
            let _one_at_a_time = ctx.row_writes().await;
            let rows = ctx.in_hand(|h| h.rows());
            if rows.is_empty() {
                return None;
            }
            let started = Instant::now();
            let renewed = ctx.store.renew(&o.instance, &rows, o.lease).await;
            Some((rows, started, renewed))
        });
        let Some((rows, started, renewed)) = renewal.await else {
            continue;
        };
        match renewed {
            Ok(renewed) => {
                if renewed < rows.len() as u64 {
                    metrics::counter!("smsrelay_leases_lost_total")
                        .increment(rows.len() as u64 - renewed);
                    tracing::warn!(
                        renewed,
                        in_hand = rows.len(),
                        "some leases could not be renewed: those rows were taken over by another instance"
                    );
                }
                ctx.in_hand(|h| h.renewed(&rows, started));
                retry = Duration::ZERO;
            }
            Err(e) => {
                retry = (retry * 2).clamp(first_retry, every);
                tracing::warn!(error = %e, retry_in = ?retry, "lease renewal failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(secs: u64) -> Instant {
        Instant::now() - Duration::from_secs(secs)
    }

    #[test]
    fn each_row_holds_from_the_start_of_its_claim_or_last_successful_renewal() {
        let lease = Duration::from_secs(30);
        let margin = Duration::from_secs(10);
        let mut hand = InHand::new(lease);
        hand.claimed([(1, 1)], Instant::now());
        assert!(!hand.nearly_over(&[(1, 1)], margin));
        hand.claimed([(2, 1)], ago(21));
        assert!(hand.nearly_over(&[(2, 1)], margin), "9s of 30s left");
        assert!(
            hand.nearly_over(&[(1, 1), (2, 1)], margin),
            "any row counts"
        );

        hand.renewed(&[(2, 1)], ago(1));
        assert!(!hand.nearly_over(&[(1, 1), (2, 1)], margin));
        // A renewal that started before the claim does not shorten it.
        hand.renewed(&[(2, 1)], ago(100));
        assert!(!hand.nearly_over(&[(2, 1)], margin));

        hand.forget(&[(1, 1)]);
        assert_eq!((hand.len(), hand.rows()), (1, vec![(2, 1)]));
        // A row no longer in hand is not ours to worry about.
        assert!(!hand.nearly_over(&[(1, 1)], Duration::from_secs(3600)));
    }
}
