//! The leases of one batch, from its claim until every row is recorded or
//! handed back. They are renewed every lease/3 while sends are in flight and
//! while outcomes wait to be written, and the dispatcher keeps, on its own
//! clock, until when they surely hold: a write retried through an outage
//! stops before another instance may take the rows over.

use std::time::Duration;

use tokio::time::Instant;

/// The rows of a batch still `sending` under our lease.
pub(super) struct BatchLease {
    rows: Vec<(i64, u32)>,
    lease: Duration,
    /// When the last successful claim or renewal started, plus the lease: the
    /// database set the expiry later than that, from its own clock.
    held_until: Instant,
    renew_at: Instant,
}

impl BatchLease {
    /// The lease of `rows`, claimed by a call that started at `claimed_at`.
    pub fn claimed(rows: Vec<(i64, u32)>, lease: Duration, claimed_at: Instant) -> Self {
        BatchLease {
            rows,
            lease,
            held_until: claimed_at + lease,
            renew_at: claimed_at + Self::every(lease),
        }
    }

    /// A third of the lease, so two renewals may fail before another instance may take over.
    fn every(lease: Duration) -> Duration {
        lease / 3
    }

    /// The `(id, attempt)` of every row still ours to renew.
    pub fn rows(&self) -> &[(i64, u32)] {
        &self.rows
    }

    /// When the next renewal is due.
    pub fn renew_at(&self) -> Instant {
        self.renew_at
    }

    pub fn is_due(&self) -> bool {
        Instant::now() >= self.renew_at
    }

    /// A renewal that started at `started` succeeded.
    pub fn renewed(&mut self, started: Instant) {
        self.held_until = self.held_until.max(started + self.lease);
    }

    /// Schedules the next renewal, whatever became of this one.
    pub fn reschedule(&mut self) {
        self.renew_at = Instant::now() + Self::every(self.lease);
    }

    /// Whether less than `margin` of the lease is left: a write started now
    /// might land after another instance took the rows over.
    pub fn nearly_over(&self, margin: Duration) -> bool {
        Instant::now() + margin >= self.held_until
    }

    /// `row` was recorded: no longer ours to renew.
    pub fn forget(&mut self, row: (i64, u32)) {
        self.rows.retain(|r| *r != row);
    }

    /// Only `rows` remain ours to renew (the others were recorded).
    pub fn keep_only(&mut self, rows: &[(i64, u32)]) {
        self.rows.retain(|row| rows.contains(row));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(secs: u64) -> Instant {
        Instant::now() - Duration::from_secs(secs)
    }

    #[test]
    fn a_lease_holds_from_the_start_of_its_last_successful_renewal() {
        let lease = Duration::from_secs(30);
        let margin = Duration::from_secs(10);
        let fresh = BatchLease::claimed(vec![(1, 1)], lease, Instant::now());
        assert!(!fresh.is_due() && !fresh.nearly_over(margin));
        let mut old = BatchLease::claimed(vec![(1, 1)], lease, ago(21));
        assert!(old.is_due());
        assert!(old.nearly_over(margin), "9s of 30s left");

        old.renewed(ago(1));
        old.reschedule();
        assert!(!old.nearly_over(margin) && !old.is_due());
        // A renewal that started before the claim does not shorten it.
        old.renewed(ago(100));
        assert!(!old.nearly_over(margin));
    }
}
