//! The verdict: pure functions over what the database recorded and what the
//! provider received. Each check names the message (by id) it found wrong.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use smsrelay::domain::status::Status;

use crate::seeded::Behaviour;

/// A row of `sms` (the marker is the `client_id` the run inserted it with: 1..=messages).
#[derive(Debug, Clone)]
pub struct MessageRow {
    pub id: i64,
    pub marker: i64,
    pub status: String,
    pub attempts: i64,
}

/// A row of `sms_event`, in id order.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub sms_id: i64,
    pub from: String,
    pub to: String,
}

/// A row of `sms_attempt`.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub sms_id: i64,
    pub attempt: i64,
    pub outcome: Option<String>,
    pub finished: bool,
}

/// One request the faulty provider received.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProviderRequest {
    /// Which instance and which of its processes (generation) sent it: from the URL path.
    pub instance: u32,
    pub generation: u32,
    pub sms_id: i64,
    /// `X-Smsrelay-Attempt`: a message released unspent (after a 429) is
    /// resent with the same number.
    pub attempt: i64,
    /// Which request for this message this was (1 for the first): what the answer was drawn for.
    pub nth: u32,
    /// Unix milliseconds when the request was read.
    pub received_ms: i64,
    pub behaviour: Behaviour,
}

/// An instance's process stopped (SIGSTOP) from `from_ms` to `to_ms` (Unix milliseconds).
#[derive(Debug, Clone)]
pub struct StopWindow {
    pub instance: u32,
    pub generation: u32,
    pub from_ms: i64,
    pub to_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    AtLeastOnce,
    AtMostOnce,
}

impl Guarantee {
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::AtMostOnce => "at-most-once",
        }
    }
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// How many messages the run inserted (markers 1..=inserted).
    pub inserted: i64,
    pub messages: Vec<MessageRow>,
    pub events: Vec<EventRow>,
    pub attempts: Vec<AttemptRow>,
    pub requests: Vec<ProviderRequest>,
    pub stops: Vec<StopWindow>,
}

/// What the run was configured with, as far as the checks need it.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub guarantee: Guarantee,
    pub max_attempts: i64,
    /// Sends one instance has in flight at once (`dispatch.concurrency`).
    pub concurrency: i64,
    /// Kills, stops, backend terminations and restarts the run injected.
    pub disruptions: i64,
}

/// Time an instance may still send after it read a 429 (requests already on their way).
pub const PAUSE_SLACK_MS: i64 = 1000;
/// Clock granularity between the provider's timestamps and the database's.
pub const CLOCK_SLACK_MS: i64 = 20;

/// Attempt outcomes after which the provider may or may not have the message.
pub const AMBIGUOUS: [&str; 3] = ["unknown", "abandoned", "interrupted"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    Lost {
        marker: i64,
    },
    NotTerminal {
        sms_id: i64,
        status: String,
    },
    IllegalTransition {
        sms_id: i64,
        from: String,
        to: String,
        expected_from: String,
    },
    HistoryEndsElsewhere {
        sms_id: i64,
        history: String,
        status: String,
    },
    OpenAttempt {
        sms_id: i64,
        attempt: i64,
    },
    TooManyAttempts {
        sms_id: i64,
        attempts: i64,
        max: i64,
    },
    UnrecordedSend {
        sms_id: i64,
        attempt: i64,
    },
    SentButNotTaken {
        sms_id: i64,
    },
    AttemptReused {
        sms_id: i64,
        attempt: i64,
        behaviour: Behaviour,
    },
    ThrottleSpentAttempt {
        sms_id: i64,
        attempt: i64,
        outcome: String,
    },
    AcceptedWithoutA200 {
        sms_id: i64,
        attempt: i64,
        behaviour: Option<Behaviour>,
    },
    RetriedDuringRetryAfter {
        sms_id: i64,
        attempt: i64,
        early_ms: i64,
    },
    InstanceSentWhilePaused {
        instance: u32,
        generation: u32,
        sms_id: i64,
        into_pause_ms: i64,
    },
    Duplicate {
        sms_id: i64,
        taken: i64,
        ambiguous: i64,
    },
    TooManyCrashDuplicates {
        duplicates: i64,
        bound: i64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Violation::*;
        match self {
            Lost { marker } => write!(f, "lost: message with client_id {marker} is not in sms"),
            NotTerminal { sms_id, status } => write!(f, "sms {sms_id}: still {status}"),
            IllegalTransition {
                sms_id,
                from,
                to,
                expected_from,
            } => write!(
                f,
                "sms {sms_id}: illegal transition {from} -> {to} (the message was {expected_from})"
            ),
            HistoryEndsElsewhere {
                sms_id,
                history,
                status,
            } => {
                write!(
                    f,
                    "sms {sms_id}: history ends in {history} but the row is {status}"
                )
            }
            OpenAttempt { sms_id, attempt } => {
                write!(f, "sms {sms_id}: attempt {attempt} left open")
            }
            TooManyAttempts {
                sms_id,
                attempts,
                max,
            } => {
                write!(
                    f,
                    "sms {sms_id}: {attempts} attempts, max_attempts is {max}"
                )
            }
            UnrecordedSend { sms_id, attempt } => write!(
                f,
                "sms {sms_id}: the provider got attempt {attempt}, which sms_attempt does not have"
            ),
            SentButNotTaken { sms_id } => {
                write!(f, "sms {sms_id}: recorded sent, the provider never took it")
            }
            AttemptReused {
                sms_id,
                attempt,
                behaviour,
            } => write!(
                f,
                "sms {sms_id}: attempt {attempt} reached the provider again after it answered {behaviour:?} (only a 429 hands an attempt back unspent)"
            ),
            ThrottleSpentAttempt {
                sms_id,
                attempt,
                outcome,
            } => write!(
                f,
                "sms {sms_id}: attempt {attempt} was answered 429 and recorded {outcome} (a 429 is handed back unspent)"
            ),
            AcceptedWithoutA200 {
                sms_id,
                attempt,
                behaviour,
            } => match behaviour {
                Some(b) => write!(
                    f,
                    "sms {sms_id}: attempt {attempt} recorded accepted, the provider answered {b:?}"
                ),
                None => write!(
                    f,
                    "sms {sms_id}: attempt {attempt} recorded accepted, the provider never got it"
                ),
            },
            RetriedDuringRetryAfter {
                sms_id,
                attempt,
                early_ms,
            } => write!(
                f,
                "sms {sms_id}: attempt {attempt} reached the provider again from the process that got its 429, {early_ms} ms before the Retry-After ended"
            ),
            InstanceSentWhilePaused {
                instance,
                generation,
                sms_id,
                into_pause_ms,
            } => write!(
                f,
                "instance {instance} (generation {generation}) sent sms {sms_id} {into_pause_ms} ms into a 429 pause"
            ),
            Duplicate {
                sms_id,
                taken,
                ambiguous,
            } => write!(
                f,
                "sms {sms_id}: the provider took it {taken} times, with {ambiguous} ambiguous attempts"
            ),
            TooManyCrashDuplicates { duplicates, bound } => write!(
                f,
                "{duplicates} duplicates after abandoned attempts, more than concurrency x disruptions = {bound}"
            ),
        }
    }
}

/// The figures of the summary line, and what was wrong.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub sent: i64,
    pub failed: i64,
    pub declined: i64,
    /// Takes by the provider beyond the first, over all messages.
    pub duplicates: i64,
    /// Duplicates by the outcome recorded for the attempt the provider took first.
    pub duplicates_after: BTreeMap<String, i64>,
    /// Attempts recorded as ambiguous.
    pub ambiguous: i64,
    pub lost: i64,
    pub violations: Vec<Violation>,
}

/// Runs every check.
pub fn judge(evidence: &Evidence, rules: &Rules) -> Verdict {
    let mut verdict = Verdict::default();
    let v = &mut verdict.violations;
    lost(evidence, v);
    terminal(evidence, v);
    transitions(evidence, v);
    attempts(evidence, rules, v);
    sends_recorded(evidence, v);
    released_unspent(evidence, v);
    acceptances(evidence, v);
    retry_after_per_message(evidence, v);
    retry_after_per_instance(evidence, v);
    duplicates(evidence, rules, &mut verdict);
    for m in &evidence.messages {
        match m.status.as_str() {
            "sent" | "delivered" | "undelivered" => verdict.sent += 1,
            "failed" => verdict.failed += 1,
            "declined" => verdict.declined += 1,
            _ => {}
        }
    }
    verdict.lost = verdict
        .violations
        .iter()
        .filter(|v| matches!(v, Violation::Lost { .. }))
        .count() as i64;
    verdict
}

/// Every inserted message is in `sms`.
fn lost(e: &Evidence, v: &mut Vec<Violation>) {
    let present: std::collections::HashSet<i64> = e.messages.iter().map(|m| m.marker).collect();
    v.extend(
        (1..=e.inserted)
            .filter(|marker| !present.contains(marker))
            .map(|marker| Violation::Lost { marker }),
    );
}

/// Every message is in a final status.
fn terminal(e: &Evidence, v: &mut Vec<Violation>) {
    for m in &e.messages {
        let done = m.status.parse::<Status>().is_ok_and(Status::is_final) || m.status == "sent"; // no delivery reports in this run: sent is where it ends
        if !done {
            v.push(Violation::NotTerminal {
                sms_id: m.id,
                status: m.status.clone(),
            });
        }
    }
}

/// Each message's events, walked from `pending`, follow the graph of
/// `domain::status` one after the other and end in the row's status.
fn transitions(e: &Evidence, v: &mut Vec<Violation>) {
    let mut current: HashMap<i64, String> = HashMap::new();
    for ev in &e.events {
        let now = current.entry(ev.sms_id).or_insert_with(|| "pending".into());
        let allowed = match (ev.from.parse::<Status>(), ev.to.parse::<Status>()) {
            (Ok(from), Ok(to)) => from.can_become(to),
            _ => false,
        };
        if !allowed || ev.from != *now {
            v.push(Violation::IllegalTransition {
                sms_id: ev.sms_id,
                from: ev.from.clone(),
                to: ev.to.clone(),
                expected_from: now.clone(),
            });
        }
        *now = ev.to.clone();
    }
    for m in &e.messages {
        let history = current.get(&m.id).map_or("pending", String::as_str);
        if history != m.status {
            v.push(Violation::HistoryEndsElsewhere {
                sms_id: m.id,
                history: history.into(),
                status: m.status.clone(),
            });
        }
    }
}

/// No attempt without an outcome; never more than `max_attempts`.
fn attempts(e: &Evidence, rules: &Rules, v: &mut Vec<Violation>) {
    let mut per_message: HashMap<i64, i64> = HashMap::new();
    for a in &e.attempts {
        *per_message.entry(a.sms_id).or_default() += 1;
        if a.outcome.is_none() || !a.finished {
            v.push(Violation::OpenAttempt {
                sms_id: a.sms_id,
                attempt: a.attempt,
            });
        }
    }
    for m in &e.messages {
        let rows = per_message.get(&m.id).copied().unwrap_or(0);
        let attempts = m.attempts.max(rows);
        if attempts > rules.max_attempts {
            v.push(Violation::TooManyAttempts {
                sms_id: m.id,
                attempts,
                max: rules.max_attempts,
            });
        }
    }
}

/// Every request the provider got is an attempt the database recorded (for
/// a 429 handed back unspent, the row of its number is the resend's: see
/// [`released_unspent`]); nothing is `sent` that the provider did not take.
fn sends_recorded(e: &Evidence, v: &mut Vec<Violation>) {
    let recorded: std::collections::HashSet<(i64, i64)> =
        e.attempts.iter().map(|a| (a.sms_id, a.attempt)).collect();
    for r in &e.requests {
        if !recorded.contains(&(r.sms_id, r.attempt)) {
            v.push(Violation::UnrecordedSend {
                sms_id: r.sms_id,
                attempt: r.attempt,
            });
        }
    }
    let taken: std::collections::HashSet<i64> = e
        .requests
        .iter()
        .filter(|r| r.behaviour.taken())
        .map(|r| r.sms_id)
        .collect();
    for m in &e.messages {
        if m.status == "sent" && !taken.contains(&m.id) {
            v.push(Violation::SentButNotTaken { sms_id: m.id });
        }
    }
}

fn outcome_of(e: &Evidence, sms_id: i64, attempt: i64) -> Option<&str> {
    e.attempts
        .iter()
        .find(|a| a.sms_id == sms_id && a.attempt == attempt)
        .and_then(|a| a.outcome.as_deref())
}

/// The requests for each (message, attempt number), in the order the provider read them.
fn requests_by_attempt(e: &Evidence) -> BTreeMap<(i64, i64), Vec<&ProviderRequest>> {
    let mut by_attempt: BTreeMap<(i64, i64), Vec<&ProviderRequest>> = BTreeMap::new();
    for r in &e.requests {
        by_attempt.entry((r.sms_id, r.attempt)).or_default().push(r);
    }
    for requests in by_attempt.values_mut() {
        requests.sort_by_key(|r| (r.received_ms, r.nth));
    }
    by_attempt
}

/// A 429 hands the message back to `pending` with its attempt undone: its
/// attempt row is deleted and the next send carries the same attempt number.
/// So a number may reach the provider again only after a 429 (any other
/// answer spends it: an attempt sent twice under one number is an attempt
/// the daemon undid after the provider may have taken it). And a 429 that is
/// the last request of its number has a row only if the daemon never got to
/// hand it back (killed or stalled past the lease: `abandoned`); any other
/// outcome means the 429 was recorded as an attempt.
fn released_unspent(e: &Evidence, v: &mut Vec<Violation>) {
    for ((sms_id, attempt), requests) in requests_by_attempt(e) {
        let (last, earlier) = requests
            .split_last()
            .expect("grouped requests are never empty");
        for r in earlier {
            if !matches!(r.behaviour, Behaviour::Throttle { .. }) {
                v.push(Violation::AttemptReused {
                    sms_id,
                    attempt,
                    behaviour: r.behaviour,
                });
            }
        }
        if matches!(last.behaviour, Behaviour::Throttle { .. })
            && let Some(outcome) = outcome_of(e, sms_id, attempt)
            && !matches!(outcome, "abandoned" | "interrupted")
        {
            v.push(Violation::ThrottleSpentAttempt {
                sms_id,
                attempt,
                outcome: outcome.into(),
            });
        }
    }
}

/// An attempt recorded `accepted` is the last request of its number, and the
/// provider answered it 200: at once, after the timeout (a daemon slowed by
/// the load may still read that one), or a 200's head without its body (the
/// webhook provider takes the status line as the answer; the body, with the
/// provider's id, is optional). Never a 429, a 500 or a reset.
fn acceptances(e: &Evidence, v: &mut Vec<Violation>) {
    let by_attempt = requests_by_attempt(e);
    for a in &e.attempts {
        if a.outcome.as_deref() != Some("accepted") {
            continue;
        }
        let last = by_attempt
            .get(&(a.sms_id, a.attempt))
            .and_then(|requests| requests.last())
            .map(|r| r.behaviour);
        if !matches!(
            last,
            Some(Behaviour::Accept | Behaviour::Slow | Behaviour::AcceptThenHang)
        ) {
            v.push(Violation::AcceptedWithoutA200 {
                sms_id: a.sms_id,
                attempt: a.attempt,
                behaviour: last,
            });
        }
    }
}

/// A 429 with Retry-After R to a message: the process that read it does not
/// send that message again before R has passed (the message went back to
/// `pending` unspent and its process's gate is paused; no slack for
/// requests in flight, since the 429 was this message's own request).
///
/// Other processes are not bound, unlike before the routing change, when a
/// 429 was a `transient` attempt and the row's `next_attempt_at` held the
/// Retry-After for every instance: now the row is released with no delay (so
/// another provider, with failover, or another instance can take it at
/// once) and the pause lives in the gate, per instance and in memory
/// (README "Provider health and failover"). Checking other processes against
/// it would test a promise the daemon does not make.
fn retry_after_per_message(e: &Evidence, v: &mut Vec<Violation>) {
    for throttled in &e.requests {
        let Behaviour::Throttle { secs } = throttled.behaviour else {
            continue;
        };
        let until = throttled.received_ms + secs as i64 * 1000;
        for later in &e.requests {
            if later.sms_id == throttled.sms_id
                && later.instance == throttled.instance
                && later.generation == throttled.generation
                && later.nth > throttled.nth
                && later.received_ms + CLOCK_SLACK_MS < until
            {
                v.push(Violation::RetriedDuringRetryAfter {
                    sms_id: later.sms_id,
                    attempt: later.attempt,
                    early_ms: until - later.received_ms,
                });
            }
        }
    }
}

/// A 429 with Retry-After R pauses the process that got it: from
/// [`PAUSE_SLACK_MS`] after the answer until R after it, that process sends
/// nothing. A process that was stopped (SIGSTOP) around that time is exempt:
/// its requests in flight are written whenever it is continued.
fn retry_after_per_instance(e: &Evidence, v: &mut Vec<Violation>) {
    for throttled in &e.requests {
        let Behaviour::Throttle { secs } = throttled.behaviour else {
            continue;
        };
        let t = throttled.received_ms;
        let until = t + secs as i64 * 1000 - CLOCK_SLACK_MS;
        let same = |instance: u32, generation: u32| {
            instance == throttled.instance && generation == throttled.generation
        };
        let stopped = e.stops.iter().any(|s| {
            same(s.instance, s.generation) && s.from_ms < until && s.to_ms > t - PAUSE_SLACK_MS
        });
        if stopped {
            continue;
        }
        for other in &e.requests {
            if same(other.instance, other.generation)
                && other.received_ms >= t + PAUSE_SLACK_MS
                && other.received_ms < until
            {
                v.push(Violation::InstanceSentWhilePaused {
                    instance: other.instance,
                    generation: other.generation,
                    sms_id: other.sms_id,
                    into_pause_ms: other.received_ms - t,
                });
            }
        }
    }
}

/// Duplicates: every time the provider took a message after it had taken it
/// once. Only takes count (a 200, or an answer the daemon could not read:
/// [`Behaviour::taken`]): a 429 or a 500 is no delivery. At-least-once: never more for a message than its ambiguous
/// attempts, and duplicates after abandoned attempts (crashes, stops past the
/// lease) at most `concurrency` per disruption. At-most-once: none at all.
fn duplicates(e: &Evidence, rules: &Rules, verdict: &mut Verdict) {
    let mut ambiguous: HashMap<i64, i64> = HashMap::new();
    for a in &e.attempts {
        if a.outcome.as_deref().is_some_and(|o| AMBIGUOUS.contains(&o)) {
            *ambiguous.entry(a.sms_id).or_default() += 1;
            verdict.ambiguous += 1;
        }
    }
    let mut taken: BTreeMap<i64, Vec<&ProviderRequest>> = BTreeMap::new();
    for r in e.requests.iter().filter(|r| r.behaviour.taken()) {
        taken.entry(r.sms_id).or_default().push(r);
    }
    for (sms_id, mut takes) in taken {
        if takes.len() < 2 {
            continue;
        }
        takes.sort_by_key(|r| (r.attempt, r.received_ms));
        let extra = takes.len() as i64 - 1;
        verdict.duplicates += extra;
        // Each take but the last was followed by another send: blame its recorded outcome.
        for first in &takes[..takes.len() - 1] {
            let outcome = outcome_of(e, sms_id, first.attempt).unwrap_or("none");
            *verdict.duplicates_after.entry(outcome.into()).or_default() += 1;
        }
        let allowed = match rules.guarantee {
            Guarantee::AtLeastOnce => ambiguous.get(&sms_id).copied().unwrap_or(0),
            Guarantee::AtMostOnce => 0,
        };
        if extra > allowed {
            verdict.violations.push(Violation::Duplicate {
                sms_id,
                taken: extra + 1,
                ambiguous: ambiguous.get(&sms_id).copied().unwrap_or(0),
            });
        }
    }
    let after_crash = verdict
        .duplicates_after
        .get("abandoned")
        .copied()
        .unwrap_or(0);
    let bound = rules.concurrency * rules.disruptions;
    if after_crash > bound {
        verdict.violations.push(Violation::TooManyCrashDuplicates {
            duplicates: after_crash,
            bound,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        guarantee: Guarantee::AtLeastOnce,
        max_attempts: 3,
        concurrency: 4,
        disruptions: 1,
    };

    fn event(sms_id: i64, from: &str, to: &str) -> EventRow {
        EventRow {
            sms_id,
            from: from.into(),
            to: to.into(),
        }
    }

    fn attempt(sms_id: i64, attempt: i64, outcome: &str) -> AttemptRow {
        AttemptRow {
            sms_id,
            attempt,
            outcome: Some(outcome.into()),
            finished: true,
        }
    }

    /// The provider's nth request for a message is its attempt number, unless a test says otherwise.
    fn request(sms_id: i64, attempt: i64, at: i64, behaviour: Behaviour) -> ProviderRequest {
        ProviderRequest {
            instance: 0,
            generation: 0,
            sms_id,
            attempt,
            nth: attempt as u32,
            received_ms: at,
            behaviour,
        }
    }

    /// Message 1: a 500, then sent. Message 2: a reset (taken, unknown), then
    /// sent again (a duplicate the unknown explains). Message 3: declined.
    fn clean() -> Evidence {
        Evidence {
            inserted: 3,
            messages: vec![
                MessageRow {
                    id: 1,
                    marker: 1,
                    status: "sent".into(),
                    attempts: 2,
                },
                MessageRow {
                    id: 2,
                    marker: 2,
                    status: "sent".into(),
                    attempts: 2,
                },
                MessageRow {
                    id: 3,
                    marker: 3,
                    status: "declined".into(),
                    attempts: 1,
                },
            ],
            events: vec![
                event(1, "pending", "sending"),
                event(2, "pending", "sending"),
                event(3, "pending", "sending"),
                event(1, "sending", "pending"),
                event(2, "sending", "pending"),
                event(3, "sending", "declined"),
                event(1, "pending", "sending"),
                event(2, "pending", "sending"),
                event(1, "sending", "sent"),
                event(2, "sending", "sent"),
            ],
            attempts: vec![
                attempt(1, 1, "transient"),
                attempt(1, 2, "accepted"),
                attempt(2, 1, "unknown"),
                attempt(2, 2, "accepted"),
                attempt(3, 1, "invalid"),
            ],
            requests: vec![
                request(1, 1, 1_000, Behaviour::ServerError),
                request(2, 1, 1_000, Behaviour::Reset),
                request(1, 2, 2_000, Behaviour::Accept),
                request(2, 2, 2_000, Behaviour::Accept),
            ],
            stops: vec![],
        }
    }

    fn violations(e: &Evidence, rules: &Rules) -> Vec<Violation> {
        judge(e, rules).violations
    }

    #[test]
    fn a_clean_run_passes_with_its_figures() {
        let verdict = judge(&clean(), &RULES);
        assert_eq!(verdict.violations, vec![]);
        assert_eq!((verdict.sent, verdict.failed, verdict.declined), (2, 0, 1));
        assert_eq!(
            (verdict.duplicates, verdict.ambiguous, verdict.lost),
            (1, 1, 0)
        );
        assert_eq!(verdict.duplicates_after.get("unknown"), Some(&1));
    }

    #[test]
    fn a_missing_message_is_lost() {
        let mut e = clean();
        e.inserted = 4;
        let verdict = judge(&e, &RULES);
        assert_eq!(verdict.violations, vec![Violation::Lost { marker: 4 }]);
        assert_eq!(verdict.lost, 1);
    }

    #[test]
    fn a_message_left_pending_is_not_terminal() {
        let mut e = clean();
        e.messages.push(MessageRow {
            id: 4,
            marker: 4,
            status: "pending".into(),
            attempts: 0,
        });
        e.inserted = 4;
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::NotTerminal {
                sms_id: 4,
                status: "pending".into()
            }]
        );
    }

    #[test]
    fn a_transition_outside_the_graph_is_caught() {
        let mut e = clean();
        // declined -> pending: a final status left.
        e.events.push(event(3, "declined", "pending"));
        e.messages[2].status = "pending".into();
        let found = violations(&e, &RULES);
        assert!(found.contains(&Violation::IllegalTransition {
            sms_id: 3,
            from: "declined".into(),
            to: "pending".into(),
            expected_from: "declined".into()
        }));
    }

    #[test]
    fn an_event_that_does_not_follow_the_last_one_is_caught() {
        let mut e = clean();
        // A legal pair, but message 1 was already `sent`: a second sending -> sent.
        e.events.push(event(1, "sending", "sent"));
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::IllegalTransition {
                sms_id: 1,
                from: "sending".into(),
                to: "sent".into(),
                expected_from: "sent".into()
            }]
        );
    }

    #[test]
    fn a_row_whose_status_is_not_where_its_history_ends_is_caught() {
        let mut e = clean();
        e.messages[2].status = "failed".into();
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::HistoryEndsElsewhere {
                sms_id: 3,
                history: "declined".into(),
                status: "failed".into()
            }]
        );
    }

    #[test]
    fn an_open_attempt_is_caught() {
        let mut e = clean();
        e.attempts[4].outcome = None;
        e.attempts[4].finished = false;
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::OpenAttempt {
                sms_id: 3,
                attempt: 1
            }]
        );
    }

    #[test]
    fn attempts_beyond_max_attempts_are_caught() {
        let rules = Rules {
            max_attempts: 1,
            ..RULES
        };
        let found = violations(&clean(), &rules);
        assert!(found.contains(&Violation::TooManyAttempts {
            sms_id: 1,
            attempts: 2,
            max: 1
        }));
        assert!(found.contains(&Violation::TooManyAttempts {
            sms_id: 2,
            attempts: 2,
            max: 1
        }));
    }

    #[test]
    fn a_send_without_its_attempt_row_is_caught() {
        let mut e = clean();
        e.requests
            .push(request(3, 2, 3_000, Behaviour::ServerError));
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::UnrecordedSend {
                sms_id: 3,
                attempt: 2
            }]
        );
    }

    #[test]
    fn sent_without_the_provider_taking_it_is_caught() {
        let mut e = clean();
        e.requests[2].behaviour = Behaviour::ServerError;
        assert_eq!(
            violations(&e, &RULES),
            vec![
                Violation::SentButNotTaken { sms_id: 1 },
                Violation::AcceptedWithoutA200 {
                    sms_id: 1,
                    attempt: 2,
                    behaviour: Some(Behaviour::ServerError)
                }
            ]
        );
    }

    #[test]
    fn accepted_after_a_lost_answer_or_no_request_is_caught() {
        let mut e = clean();
        // The provider reset the connection: the daemon cannot have read a 200.
        e.requests[3].behaviour = Behaviour::Reset;
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::AcceptedWithoutA200 {
                sms_id: 2,
                attempt: 2,
                behaviour: Some(Behaviour::Reset)
            }]
        );
        // A 200's head without its body is an answer the webhook accepts.
        e.requests[3].behaviour = Behaviour::AcceptThenHang;
        assert_eq!(violations(&e, &RULES), vec![]);
        let mut e = clean();
        e.requests.remove(3);
        let found = violations(&e, &RULES);
        assert!(found.contains(&Violation::AcceptedWithoutA200 {
            sms_id: 2,
            attempt: 2,
            behaviour: None
        }));
    }

    /// `clean()`, but message 1's first send is answered 429 (Retry-After
    /// `secs`) instead of 500, so it goes back unspent: no attempt row, and
    /// the resend at `retry_at` carries attempt number 1 again.
    fn throttled(secs: u64, retry_at: i64) -> Evidence {
        let mut e = clean();
        e.messages[0].attempts = 1;
        e.attempts.remove(0);
        e.attempts[0].attempt = 1;
        e.requests[0].behaviour = Behaviour::Throttle { secs };
        e.requests[2].attempt = 1;
        e.requests[2].received_ms = retry_at;
        // Message 2's retry comes after the pause, from the same process.
        e.requests[3].received_ms = 1_000 + secs as i64 * 1000 + 500;
        e
    }

    #[test]
    fn a_429_handed_back_unspent_passes() {
        assert_eq!(violations(&throttled(2, 3_000), &RULES), vec![]);
    }

    #[test]
    fn a_retry_before_the_retry_after_is_caught_and_one_after_it_is_not() {
        // The same process resent message 1 at 1.8 s, 0.8 s after its 429 said 2 s.
        let e = throttled(2, 1_800);
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::RetriedDuringRetryAfter {
                sms_id: 1,
                attempt: 1,
                early_ms: 1_200
            }]
        );
        // Another process's gate did not read that 429 (the gate is per instance).
        let mut other = e.clone();
        other.requests[2].generation = 1;
        assert_eq!(violations(&other, &RULES), vec![]);
        assert_eq!(violations(&throttled(2, 3_000), &RULES), vec![]);
    }

    #[test]
    fn a_429_recorded_as_an_attempt_is_caught() {
        // As before routing: the 429 spent attempt 1 (`transient`) and the resend was attempt 2.
        let mut e = clean();
        e.requests[0].behaviour = Behaviour::Throttle { secs: 2 };
        e.requests[2].received_ms = 3_500;
        e.requests[3].received_ms = 3_500;
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::ThrottleSpentAttempt {
                sms_id: 1,
                attempt: 1,
                outcome: "transient".into()
            }]
        );
        // A 429 the daemon died before handing back is the reaper's `abandoned`: no violation.
        e.attempts[0].outcome = Some("abandoned".into());
        assert_eq!(violations(&e, &RULES), vec![]);
    }

    #[test]
    fn an_attempt_number_sent_again_after_anything_but_a_429_is_caught() {
        // Message 1's 500 was handed back unspent: its resend reused attempt 1.
        let mut e = throttled(2, 3_000);
        e.requests[0].behaviour = Behaviour::ServerError;
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::AttemptReused {
                sms_id: 1,
                attempt: 1,
                behaviour: Behaviour::ServerError
            }]
        );
        // A hang (taken) handed back unspent: a duplicate no ambiguous attempt explains, too.
        e.requests[0].behaviour = Behaviour::AcceptThenHang;
        let found = violations(&e, &RULES);
        assert!(found.contains(&Violation::AttemptReused {
            sms_id: 1,
            attempt: 1,
            behaviour: Behaviour::AcceptThenHang
        }));
        assert!(found.contains(&Violation::Duplicate {
            sms_id: 1,
            taken: 2,
            ambiguous: 0
        }));
    }

    #[test]
    fn an_instance_sending_during_its_own_pause_is_caught() {
        let mut e = throttled(3, 4_000);
        // Message 2's retry at 2.5 s came from the same process, 1.5 s into the 3 s pause.
        e.requests[3].received_ms = 2_500;
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::InstanceSentWhilePaused {
                instance: 0,
                generation: 0,
                sms_id: 2,
                into_pause_ms: 1_500
            }]
        );
        // Another process, or the same one stopped meanwhile, is not bound by it.
        let mut other = e.clone();
        other.requests[3].generation = 1;
        assert_eq!(violations(&other, &RULES), vec![]);
        e.stops.push(StopWindow {
            instance: 0,
            generation: 0,
            from_ms: 900,
            to_ms: 2_400,
        });
        assert_eq!(violations(&e, &RULES), vec![]);
    }

    #[test]
    fn a_duplicate_without_an_ambiguous_attempt_is_caught() {
        let mut e = clean();
        e.attempts[2].outcome = Some("transient".into());
        assert_eq!(
            violations(&e, &RULES),
            vec![Violation::Duplicate {
                sms_id: 2,
                taken: 2,
                ambiguous: 0
            }]
        );
    }

    #[test]
    fn at_most_once_allows_no_duplicate_at_all() {
        let rules = Rules {
            guarantee: Guarantee::AtMostOnce,
            ..RULES
        };
        assert_eq!(
            violations(&clean(), &rules),
            vec![Violation::Duplicate {
                sms_id: 2,
                taken: 2,
                ambiguous: 1
            }]
        );
    }

    #[test]
    fn crash_duplicates_beyond_the_sends_in_flight_are_caught() {
        let mut e = clean();
        e.attempts[2].outcome = Some("abandoned".into());
        let rules = Rules {
            concurrency: 0,
            ..RULES
        };
        assert_eq!(
            violations(&e, &rules),
            vec![Violation::TooManyCrashDuplicates {
                duplicates: 1,
                bound: 0
            }]
        );
        assert_eq!(violations(&e, &RULES), vec![]);
    }
}
