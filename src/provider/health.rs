//! A provider's health gate, wrapped around every provider: it watches the
//! answers and holds sends back while the provider cannot take them, so the
//! backlog waits instead of spending its attempts.
//!
//! - A configuration answer (credentials refused, wrong send URL, suspended
//!   account) pauses the provider, 5 s doubling to 60 s between probes.
//! - A 429 pauses it for the provider's Retry-After (a few seconds without one).
//! - `breaker_threshold` consecutive failures (5xx, timeouts, connection
//!   errors) open the circuit, with the same backoff between probes.
//!
//! - `[provider.<name>] rate_limit` (segments per second, a token bucket
//!   from `governor`; a 3-part message takes 3 tokens) and `max_in_flight`
//!   hold each send back until it fits, before the gate admits it.
//!
//! When a pause ends one send goes through as a probe; its answer closes the
//! gate (anything the provider decided: accepted or refused) or pauses it
//! again for twice as long. While paused the dispatcher claims nothing, and
//! one message for the probe ([`Provider::readiness`]); a send the gate
//! refuses (another instance's, or one already claimed when the pause began)
//! answers [`Unavailable::Paused`] (or `Throttled`) and the message goes back
//! to `pending` with its attempt undone, as does the message whose answer
//! paused the provider (a configuration refusal or a 429). The pause is logged once, with
//! the provider and the reason, and `smsrelay_provider_paused{provider}` is 1
//! while it lasts.

use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    CallbackContext, OutboundSms, Provider, Readiness, SendLimits, SendOutcome, SentVia,
    Unavailable,
};

/// How the gate reacts; [`Policy::default`] is what the daemon uses.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The first pause after a configuration answer or an opened circuit.
    pub pause_initial: Duration,
    /// The longest pause between probes.
    pub pause_max: Duration,
    /// The pause after a 429 that names no Retry-After.
    pub throttle_default: Duration,
    /// The longest Retry-After honoured.
    pub throttle_max: Duration,
    /// Consecutive failures that open the circuit.
    pub breaker_threshold: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            pause_initial: Duration::from_secs(5),
            pause_max: Duration::from_secs(60),
            throttle_default: Duration::from_secs(3),
            throttle_max: Duration::from_secs(3600),
            breaker_threshold: 5,
        }
    }
}

/// Why the provider is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    Configuration,
    Throttled,
    CircuitOpen,
}

impl PauseReason {
    fn as_str(self) -> &'static str {
        match self {
            PauseReason::Configuration => "configuration problem",
            PauseReason::Throttled => "throttled by the provider",
            PauseReason::CircuitOpen => "circuit open after repeated failures",
        }
    }
}

#[derive(Debug)]
struct Pause {
    until: Instant,
    reason: PauseReason,
    /// A probe is out; other sends wait for its answer.
    probing: bool,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    /// The last pause between probes; zero once the provider answers again.
    backoff: Duration,
    pause: Option<Pause>,
}

/// A provider behind its health gate.
pub struct HealthGated {
    inner: Arc<dyn Provider>,
    policy: Policy,
    /// One token per segment, refilled at `rate_limit` per second.
    rate: Option<governor::DefaultDirectRateLimiter>,
    /// `max_in_flight` permits.
    in_flight: Option<tokio::sync::Semaphore>,
    state: Mutex<State>,
    /// The gauge is first set at the first dispatch cycle: the metrics
    /// recorder is installed after the provider is built.
    gauge_started: Once,
}

/// What the gate lets a send do.
enum Admission {
    Normal,
    Probe,
    Refused(SendOutcome),
}

/// Gives the probe slot back if a probe's send is dropped unanswered (shutdown).
struct ProbeGuard<'a> {
    gate: &'a HealthGated,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(pause) = self.gate.lock().pause.as_mut()
        {
            pause.probing = false;
        }
    }
}

impl HealthGated {
    /// `inner` behind a gate with the default policy and its section's limits.
    pub fn wrap(inner: Arc<dyn Provider>, limits: SendLimits) -> Arc<dyn Provider> {
        Arc::new(Self::new(inner, Policy::default(), limits))
    }

    fn new(inner: Arc<dyn Provider>, policy: Policy, limits: SendLimits) -> Self {
        Self {
            inner,
            policy,
            rate: limits.rate_limit.and_then(token_bucket),
            in_flight: limits
                .max_in_flight
                .map(|n| tokio::sync::Semaphore::new(n as usize)),
            state: Mutex::new(State::default()),
            gauge_started: Once::new(),
        }
    }

    /// Waits until the send fits `max_in_flight` and `rate_limit`; the
    /// permit it returns is held until the answer.
    async fn fit(&self, segments: u32) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let permit = match &self.in_flight {
            // The semaphore is never closed.
            Some(slots) => slots.acquire().await.ok(),
            None => None,
        };
        if let Some(bucket) = &self.rate {
            // One token at a time: a message longer than the burst still gets through.
            for _ in 0..segments.max(1) {
                bucket.until_ready().await;
            }
        }
        permit
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every update; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        let Some(pause) = state.pause.as_mut() else {
            return Admission::Normal;
        };
        if now >= pause.until && !pause.probing {
            pause.probing = true;
            return Admission::Probe;
        }
        Admission::Refused(SendOutcome::ProviderUnavailable {
            error: format!(
                "provider {} paused ({}); not sent",
                self.inner.name(),
                pause.reason.as_str()
            ),
            http_status: None,
            cause: match pause.reason {
                PauseReason::Throttled => Unavailable::Throttled,
                _ => Unavailable::Paused,
            },
        })
    }

    fn observe(&self, probe: bool, answer: &SendOutcome, now: Instant) {
        let mut state = self.lock();
        match answer {
            SendOutcome::ProviderUnavailable {
                error,
                cause: Unavailable::Configuration,
                ..
            } => self.pause(&mut state, PauseReason::Configuration, probe, error, now),
            SendOutcome::Transient {
                error,
                http_status: Some(429),
                retry_after,
            } => {
                let wait = retry_after
                    .unwrap_or(self.policy.throttle_default)
                    .min(self.policy.throttle_max);
                self.throttle(&mut state, wait, error, now);
            }
            SendOutcome::Transient { error, .. } | SendOutcome::Unknown { error } => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                if probe || state.consecutive_failures >= self.policy.breaker_threshold {
                    let reason = state
                        .pause
                        .as_ref()
                        .map_or(PauseReason::CircuitOpen, |p| p.reason);
                    self.pause(&mut state, reason, probe, error, now);
                }
            }
            // The provider decided about the message: it is working.
            SendOutcome::Accepted { .. } | SendOutcome::Permanent { .. } => {
                state.consecutive_failures = 0;
                // A send that was already out when the pause began ends
                // nothing (a 429's Retry-After stands): only the probe's answer does.
                if state.pause.is_some() && !probe {
                    return;
                }
                state.backoff = Duration::ZERO;
                if let Some(pause) = state.pause.take() {
                    self.set_paused_metric(false);
                    tracing::info!(
                        provider = self.inner.name(),
                        was = pause.reason.as_str(),
                        "provider answering again; sends resumed"
                    );
                }
            }
            SendOutcome::ProviderUnavailable {
                cause: Unavailable::Paused | Unavailable::Throttled,
                ..
            } => {}
        }
    }

    /// Pauses for the backoff: the first pause, or (after a failed probe) twice the last.
    fn pause(
        &self,
        state: &mut State,
        reason: PauseReason,
        probe: bool,
        error: &str,
        now: Instant,
    ) {
        let fresh = state.pause.is_none();
        if !fresh && !probe {
            // Sends that were already out when the pause began change nothing.
            return;
        }
        state.backoff = if fresh {
            self.policy.pause_initial
        } else {
            (state.backoff * 2)
                .max(self.policy.pause_initial)
                .min(self.policy.pause_max)
        };
        state.pause = Some(Pause {
            until: now + state.backoff,
            reason,
            probing: false,
        });
        if fresh {
            self.set_paused_metric(true);
            tracing::warn!(
                provider = self.inner.name(),
                reason = reason.as_str(),
                error,
                probe_in = ?state.backoff,
                "provider paused; messages wait in pending without spending attempts"
            );
        } else {
            tracing::debug!(provider = self.inner.name(), error, probe_in = ?state.backoff, "probe failed; still paused");
        }
    }

    /// Pauses for the provider's Retry-After; a longer pause already set stays.
    fn throttle(&self, state: &mut State, wait: Duration, error: &str, now: Instant) {
        let until = now + wait;
        match state.pause.as_mut() {
            Some(pause) => {
                pause.until = pause.until.max(until);
                pause.probing = false;
            }
            None => {
                state.pause = Some(Pause {
                    until,
                    reason: PauseReason::Throttled,
                    probing: false,
                });
                self.set_paused_metric(true);
                tracing::warn!(
                    provider = self.inner.name(),
                    reason = PauseReason::Throttled.as_str(),
                    error,
                    pause = ?wait,
                    "provider paused"
                );
            }
        }
    }

    fn set_paused_metric(&self, paused: bool) {
        metrics::gauge!("smsrelay_provider_paused", "provider" => self.inner.name().to_owned())
            .set(if paused { 1.0 } else { 0.0 });
    }
}

#[async_trait]
impl Provider for HealthGated {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, sms: &OutboundSms<'_>) -> SendOutcome {
        self.send_via(sms, &SentVia::default()).await
    }

    async fn send_via(&self, sms: &OutboundSms<'_>, via: &SentVia) -> SendOutcome {
        let _in_flight = self.fit(sms.segments).await;
        let probe = match self.admit(Instant::now()) {
            Admission::Refused(outcome) => return outcome,
            Admission::Normal => false,
            Admission::Probe => true,
        };
        let mut guard = ProbeGuard {
            gate: self,
            armed: probe,
        };
        let answer = self.inner.send_via(sms, via).await;
        guard.armed = false;
        self.observe(probe, &answer, Instant::now());
        answer
    }

    fn callback_routes(&self, context: &CallbackContext) -> Option<axum::Router> {
        self.inner.callback_routes(context)
    }

    fn is_gated(&self) -> bool {
        true
    }

    fn readiness(&self) -> Readiness {
        let state = self.lock();
        self.gauge_started
            .call_once(|| self.set_paused_metric(state.pause.is_some()));
        let Some(pause) = state.pause.as_ref() else {
            return Readiness::Ready;
        };
        match pause.until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Readiness::Paused(left),
            _ => Readiness::ProbeOnly,
        }
    }
}

/// A bucket of one second's worth of segments (at least one), refilled at `per_second`.
fn token_bucket(per_second: f64) -> Option<governor::DefaultDirectRateLimiter> {
    let refill = Duration::try_from_secs_f64(1.0 / per_second).ok()?;
    let burst =
        std::num::NonZeroU32::new(per_second.floor().clamp(1.0, f64::from(u32::MAX)) as u32)?;
    let quota = governor::Quota::with_period(refill)?.allow_burst(burst);
    Some(governor::RateLimiter::direct(quota))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::phone::E164;

    /// Answers from a fixed script, then accepts.
    struct Scripted {
        answers: Mutex<Vec<SendOutcome>>,
    }

    #[async_trait]
    impl Provider for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        async fn send(&self, _sms: &OutboundSms<'_>) -> SendOutcome {
            let mut answers = self.answers.lock().unwrap();
            if answers.is_empty() {
                accepted()
            } else {
                answers.remove(0)
            }
        }
    }

    fn accepted() -> SendOutcome {
        SendOutcome::Accepted {
            provider_message_id: None,
            http_status: Some(200),
        }
    }

    fn server_error() -> SendOutcome {
        SendOutcome::Transient {
            error: "provider answered HTTP 503".into(),
            http_status: Some(503),
            retry_after: None,
        }
    }

    fn gate(answers: Vec<SendOutcome>) -> HealthGated {
        HealthGated::new(
            Arc::new(Scripted {
                answers: Mutex::new(answers),
            }),
            Policy::default(),
            SendLimits::default(),
        )
    }

    async fn send(gate: &HealthGated) -> SendOutcome {
        let to = E164::parse("+254712345678", None).unwrap();
        gate.send(&OutboundSms {
            id: 1,
            attempt: 1,
            to: &to,
            message: "hi",
            segments: 1,
            send_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        })
        .await
    }

    #[tokio::test]
    async fn the_circuit_opens_after_the_threshold_and_a_probe_closes_it() {
        let gate = gate(vec![server_error(); 5]);
        for _ in 0..5 {
            assert_eq!(send(&gate).await, server_error());
        }
        assert!(matches!(gate.readiness(), Readiness::Paused(_)));
        assert!(send(&gate).await.was_held_back());
        // Pretend the pause ran out: one probe goes through and closes the circuit.
        gate.lock().pause.as_mut().unwrap().until = Instant::now();
        assert_eq!(gate.readiness(), Readiness::ProbeOnly);
        assert_eq!(send(&gate).await, accepted());
        assert!(gate.lock().pause.is_none());
        assert_eq!(gate.lock().consecutive_failures, 0);
    }

    #[tokio::test]
    async fn a_failed_probe_doubles_the_pause_up_to_the_maximum() {
        let configuration = SendOutcome::ProviderUnavailable {
            error: "HTTP 401".into(),
            http_status: Some(401),
            cause: Unavailable::Configuration,
        };
        let gate = gate(vec![configuration; 6]);
        send(&gate).await;
        let mut pauses = vec![gate.lock().backoff];
        for _ in 0..5 {
            gate.lock().pause.as_mut().unwrap().until = Instant::now();
            send(&gate).await;
            pauses.push(gate.lock().backoff);
        }
        let secs: Vec<u64> = pauses.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [5, 10, 20, 40, 60, 60]);
    }

    #[tokio::test]
    async fn a_429_pauses_for_its_retry_after() {
        let gate = gate(vec![SendOutcome::Transient {
            error: "HTTP 429".into(),
            http_status: Some(429),
            retry_after: Some(Duration::from_secs(30)),
        }]);
        send(&gate).await;
        let Readiness::Paused(left) = gate.readiness() else {
            panic!("not paused after a 429");
        };
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        assert!(send(&gate).await.was_held_back());
    }

    /// Found by smsrelay-chaos (seed 1): a send already out when the 429
    /// came back answered 200 a moment later, which ended the 30 s pause at
    /// once and the instance went on sending.
    #[tokio::test]
    async fn a_send_already_out_does_not_end_a_429_pause() {
        let gate = gate(vec![]);
        let throttled = SendOutcome::Transient {
            error: "HTTP 429".into(),
            http_status: Some(429),
            retry_after: Some(Duration::from_secs(30)),
        };
        // Two sends admitted before any pause; the first gets the 429, the second a 200.
        gate.observe(false, &throttled, Instant::now());
        gate.observe(false, &accepted(), Instant::now());
        assert!(matches!(gate.readiness(), Readiness::Paused(_)));
        assert!(send(&gate).await.was_held_back());
        // The probe's answer, once the pause is over, still ends it.
        gate.lock().pause.as_mut().unwrap().until = Instant::now();
        assert_eq!(send(&gate).await, accepted());
        assert!(gate.lock().pause.is_none());
    }
}
