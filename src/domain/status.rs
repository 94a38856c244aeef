//! The life of an SMS as a state machine. The same graph is enforced by the
//! database (a trigger in each dialect's migrations) and checked by property tests.

use std::fmt;
use std::str::FromStr;

/// Where an SMS is in its life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting to be claimed (new, or scheduled for a retry).
    Pending,
    /// Claimed by one dispatcher under a lease; a send is in progress.
    Sending,
    /// The provider accepted it.
    Sent,
    /// A delivery report said it reached the handset.
    Delivered,
    /// A delivery report said it did not reach the handset.
    Undelivered,
    /// Permanently rejected: by the provider (4xx) or by validation before sending.
    Declined,
    /// Attempts exhausted or expired before it could be sent.
    Failed,
}

impl Status {
    /// Every status, in life order.
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Sending,
        Status::Sent,
        Status::Delivered,
        Status::Undelivered,
        Status::Declined,
        Status::Failed,
    ];

    /// The name stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Sending => "sending",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Undelivered => "undelivered",
            Status::Declined => "declined",
            Status::Failed => "failed",
        }
    }

    /// Whether the graph allows moving from `self` to `to`.
    pub fn can_become(self, to: Status) -> bool {
        use Status::*;
        matches!(
            (self, to),
            (Pending, Sending)
                | (Pending, Failed) // expired before it could be claimed
                | (Sending, Sent)
                | (Sending, Pending) // transient failure, lease expired, or released at shutdown
                | (Sending, Declined)
                | (Sending, Failed)
                // a delivery report that came before the send's outcome, kept
                // and applied with it (the events still say `sent` first)
                | (Sending, Delivered)
                | (Sending, Undelivered)
                | (Sent, Delivered)
                | (Sent, Undelivered)
        )
    }

    /// No transition leaves a final status.
    pub fn is_final(self) -> bool {
        Status::ALL.iter().all(|to| !self.can_become(*to))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "unknown status {0:?} (expected one of pending, sending, sent, delivered, undelivered, declined, failed)"
)]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    #[test]
    fn final_statuses_are_the_outcomes() {
        let finals: Vec<_> = Status::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                Status::Delivered,
                Status::Undelivered,
                Status::Declined,
                Status::Failed
            ]
        );
    }

    #[test]
    fn names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>(), Ok(status));
        }
        assert!("queued".parse::<Status>().is_err());
    }

    proptest! {
        /// Any walk through the graph from `pending` never leaves a final status
        /// and only visits `sent` after `sending`.
        #[test]
        fn walks_respect_the_graph(steps in proptest::collection::vec(any_status(), 0..40)) {
            let mut current = Status::Pending;
            let mut was_sending = false;
            for next in steps {
                if current.can_become(next) {
                    prop_assert!(!current.is_final());
                    if next == Status::Sent { prop_assert!(was_sending && current == Status::Sending); }
                    was_sending |= next == Status::Sending;
                    current = next;
                }
            }
        }

        #[test]
        fn no_self_loops(status in any_status()) {
            prop_assert!(!status.can_become(status));
        }
    }
}
