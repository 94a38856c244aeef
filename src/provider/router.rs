//! Failover over several providers (`[provider] order`): each send goes to
//! the first member in order whose health gate takes it. While a member is
//! paused (a configuration refusal, throttling) or its circuit is open, sends
//! go to the next; when its pause ends, its probe is the next send, and once
//! the probe is answered sends go back to it. The member that got the request
//! is recorded on the attempt ([`SentVia`]). A failure that pauses a member
//! (its failed probe, the one that opens its circuit) and did not reach it
//! is sent on to the next member at once, so a dead first provider costs no
//! message an attempt; other failures are the attempt's answer.

use std::sync::Arc;

use async_trait::async_trait;

use super::{CallbackContext, OutboundSms, Provider, Readiness, SendOutcome, SentVia, Unavailable};

/// Several providers behind their health gates, tried in order.
pub struct Router {
    /// `twilio>kannel`: the order, for log lines (attempts name the member).
    name: String,
    members: Vec<Arc<dyn Provider>>,
}

impl Router {
    /// `members` in failover order, each behind its own health gate.
    pub fn new(members: Vec<Arc<dyn Provider>>) -> Self {
        let name = members
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(">");
        Self { name, members }
    }
}

#[async_trait]
impl Provider for Router {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        self.send_via(sms, &SentVia::default()).await
    }

    async fn send_via(&self, sms: &OutboundSms<'_>, via: &SentVia) -> SendOutcome {
        let mut held_back = None;
        for (i, member) in self.members.iter().enumerate() {
            let last = i + 1 == self.members.len();
            if matches!(member.readiness(), Readiness::Paused(_)) {
                continue;
            }
            let answer = member.send_via(sms, via).await;
            // Its gate held the send back (another send is its probe, or a
            // pause began meanwhile): the member was not asked, try the next.
            if answer.was_held_back() {
                held_back.get_or_insert(answer);
                continue;
            }
            // This answer paused the member (a failed probe, the failure that
            // opened its circuit, a 429, a refused configuration) and the
            // member did not take the message (never a lost answer): the next
            // member takes it rather than it spending an attempt.
            let not_taken = matches!(
                answer,
                SendOutcome::Transient { .. }
                    | SendOutcome::ProviderUnavailable {
                        cause: Unavailable::Configuration,
                        ..
                    }
            );
            if not_taken && !last && matches!(member.readiness(), Readiness::Paused(_)) {
                continue;
            }
            return answer;
        }
        held_back.unwrap_or_else(|| SendOutcome::ProviderUnavailable {
            error: format!("every provider of {} is paused; not sent", self.name),
            http_status: None,
            cause: Unavailable::Paused,
        })
    }

    fn is_gated(&self) -> bool {
        true
    }

    fn callback_router(&self, context: &CallbackContext) -> axum::Router {
        self.members
            .iter()
            .fold(axum::Router::new(), |routes, member| {
                routes.merge(member.callback_router(context))
            })
    }

    /// The best of the members': ready if any is.
    fn readiness(&self) -> Readiness {
        let all: Vec<Readiness> = self.members.iter().map(|m| m.readiness()).collect();
        if all.contains(&Readiness::Ready) {
            return Readiness::Ready;
        }
        if all.contains(&Readiness::ProbeOnly) {
            return Readiness::ProbeOnly;
        }
        all.into_iter()
            .filter_map(|r| match r {
                Readiness::Paused(left) => Some(left),
                _ => None,
            })
            .min()
            .map_or(Readiness::Ready, Readiness::Paused)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::domain::phone::E164;

    /// Answers `answer`, reports `readiness`, and counts its sends.
    struct Fixed {
        name: &'static str,
        answer: SendOutcome,
        readiness: Mutex<Readiness>,
        /// Its readiness after a send (a failure that pauses it).
        after_send: Option<Readiness>,
        sends: Mutex<u32>,
    }

    #[async_trait]
    impl Provider for Fixed {
        fn name(&self) -> &str {
            self.name
        }
        async fn send(&self, _sms: &OutboundSms<'_>) -> SendOutcome {
            *self.sends.lock().unwrap() += 1;
            if let Some(after) = self.after_send {
                *self.readiness.lock().unwrap() = after;
            }
            self.answer.clone()
        }
        fn readiness(&self) -> Readiness {
            *self.readiness.lock().unwrap()
        }
    }

    fn member(name: &'static str, answer: SendOutcome, readiness: Readiness) -> Arc<Fixed> {
        Arc::new(Fixed {
            name,
            answer,
            readiness: Mutex::new(readiness),
            after_send: None,
            sends: Mutex::new(0),
        })
    }

    fn accepted() -> SendOutcome {
        SendOutcome::Accepted {
            provider_message_id: None,
            http_status: Some(200),
        }
    }

    fn held_back() -> SendOutcome {
        SendOutcome::ProviderUnavailable {
            error: "paused".into(),
            http_status: None,
            cause: Unavailable::Paused,
        }
    }

    async fn send(router: &Router) -> (SendOutcome, Option<String>) {
        let to = E164::parse("+254712345678", None).unwrap();
        let via = SentVia::default();
        let sms = OutboundSms {
            id: 1,
            attempt: 1,
            to: &to,
            message: "hi",
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        };
        let answer = router.send_via(&sms, &via).await;
        (answer, via.provider())
    }

    #[tokio::test]
    async fn a_paused_first_member_is_skipped_and_a_held_back_send_tries_the_next() {
        let paused = Readiness::Paused(Duration::from_secs(5));
        let (a, b) = (
            member("a", accepted(), paused),
            member("b", accepted(), Readiness::Ready),
        );
        let router = Router::new(vec![a.clone(), b.clone()]);
        assert_eq!(router.name(), "a>b");
        assert_eq!(send(&router).await, (accepted(), Some("b".into())));
        assert_eq!((*a.sends.lock().unwrap(), *b.sends.lock().unwrap()), (0, 1));

        // `a` says it may probe, but its gate holds this send back: `b` gets it.
        let (a, b) = (
            member("a", held_back(), Readiness::ProbeOnly),
            member("b", accepted(), Readiness::Ready),
        );
        let router = Router::new(vec![a, b]);
        assert_eq!(send(&router).await, (accepted(), Some("b".into())));
    }

    #[tokio::test]
    async fn the_first_ready_member_answers_even_with_a_failure() {
        let failure = SendOutcome::Transient {
            error: "HTTP 503".into(),
            http_status: Some(503),
            retry_after: None,
        };
        let (a, b) = (
            member("a", failure.clone(), Readiness::Ready),
            member("b", accepted(), Readiness::Ready),
        );
        let router = Router::new(vec![a, b.clone()]);
        assert_eq!(send(&router).await, (failure, Some("a".into())));
        assert_eq!(*b.sends.lock().unwrap(), 0, "one request per attempt");
    }

    #[tokio::test]
    async fn a_failure_that_pauses_a_member_goes_on_to_the_next() {
        let failure = SendOutcome::Transient {
            error: "HTTP 503".into(),
            http_status: Some(503),
            retry_after: None,
        };
        let pausing = |name| {
            Arc::new(Fixed {
                name,
                answer: failure.clone(),
                readiness: Mutex::new(Readiness::ProbeOnly),
                after_send: Some(Readiness::Paused(Duration::from_secs(10))),
                sends: Mutex::new(0),
            })
        };
        let b = member("b", accepted(), Readiness::Ready);
        let router = Router::new(vec![pausing("a"), b.clone()]);
        assert_eq!(send(&router).await, (accepted(), Some("b".into())));
        // The last member has no one after it: its failure is the answer.
        let router = Router::new(vec![pausing("a"), pausing("c")]);
        assert_eq!(send(&router).await, (failure, Some("c".into())));
    }

    #[tokio::test]
    async fn readiness_is_the_best_of_the_members() {
        let soon = Readiness::Paused(Duration::from_secs(2));
        let later = Readiness::Paused(Duration::from_secs(9));
        let router =
            |x, y| Router::new(vec![member("a", accepted(), x), member("b", accepted(), y)]);
        assert_eq!(
            router(later, Readiness::Ready).readiness(),
            Readiness::Ready
        );
        assert_eq!(
            router(later, Readiness::ProbeOnly).readiness(),
            Readiness::ProbeOnly
        );
        assert_eq!(router(later, soon).readiness(), soon);
        let (answer, via) = send(&router(later, soon)).await;
        assert!(answer.was_held_back());
        assert_eq!(via, None, "no request was started");
    }
}
