//! Everything the seed decides, as pure functions: what the provider answers
//! to the nth request it reads for each message, and the fault schedule. The
//! same seed gives the same answers and the same faults at the same offsets;
//! only the daemons' own timing differs between runs.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One round of splitmix64: a good, cheap mix of the seed with the inputs.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// What the faulty provider does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// 200 with a provider id.
    Accept,
    /// 500: not taken.
    ServerError,
    /// 429 with `Retry-After: secs`: not taken.
    Throttle { secs: u64 },
    /// Taken, but the 200 comes after the daemon's provider timeout.
    Slow,
    /// Taken, then the connection is reset (RST) before any answer.
    Reset,
    /// Taken: status line and headers of a 200 are written, then the body never comes.
    AcceptThenHang,
}

impl Behaviour {
    /// Whether the provider keeps the message (it would reach the handset).
    /// Every answer the daemon cannot read counts as taken: the worst case for duplicates.
    pub fn taken(self) -> bool {
        !matches!(self, Behaviour::ServerError | Behaviour::Throttle { .. })
    }
}

/// The provider's answer to the `nth` request (1 for the first) it reads for
/// message `sms_id`: fixed by the seed, whichever instance sends it and
/// whenever. Keyed by the request, not by `X-Smsrelay-Attempt`: a 429 hands
/// the message back with its attempt undone, so the retry carries the same
/// attempt number and must get a fresh draw, or a 429 would repeat for ever.
pub fn behaviour(seed: u64, sms_id: i64, nth: u32) -> Behaviour {
    let roll = mix(seed ^ mix(sms_id as u64) ^ mix(u64::from(nth) << 40));
    match roll % 100 {
        0..=66 => Behaviour::Accept,
        67..=76 => Behaviour::ServerError,
        // Rare: every 429 pauses the whole instance that got it for 2-3 s.
        77..=78 => Behaviour::Throttle {
            secs: 2 + (roll >> 32) % 2,
        },
        79..=85 => Behaviour::Slow,
        86..=92 => Behaviour::Reset,
        _ => Behaviour::AcceptThenHang,
    }
}

/// A fault the run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL of an instance; it is started again (a new generation) after `restart_after`.
    Kill {
        instance: usize,
        restart_after: Duration,
    },
    /// SIGSTOP of an instance, SIGCONT after `for_`.
    Stop { instance: usize, for_: Duration },
    /// `pg_terminate_backend` of every backend of the daemons.
    Terminate,
    /// `pg_ctl restart -m immediate`.
    Restart,
}

/// A fault and when, from the start of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// The fault schedule of a run lasting `duration`: one fault every 2-6 s,
/// the first four one of each kind (in a seeded order) so even a short run
/// has them all. A stopped instance is neither killed nor stopped again
/// before it is continued; the last fault leaves `lease` + 2 s before the end.
pub fn schedule(seed: u64, duration: Duration, instances: usize, lease: Duration) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(mix(seed));
    let mut kinds = [0u8, 1, 2, 3];
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.random_range(0..=i));
    }
    let end = duration.saturating_sub(lease + Duration::from_secs(2));
    let mut stopped_until = vec![Duration::ZERO; instances];
    let mut plan = Vec::new();
    let mut at = Duration::from_millis(rng.random_range(1500..3000));
    while at < end {
        let kind = match plan.len() {
            n if n < kinds.len() => kinds[n],
            _ => match rng.random_range(0..100) {
                0..=34 => 0,
                35..=59 => 1,
                60..=84 => 2,
                _ => 3,
            },
        };
        let running: Vec<usize> = (0..instances).filter(|&i| stopped_until[i] <= at).collect();
        let fault = match kind {
            0 | 1 if running.is_empty() => Fault::Terminate,
            0 => Fault::Kill {
                instance: running[rng.random_range(0..running.len())],
                restart_after: Duration::from_millis(rng.random_range(200..2000)),
            },
            1 => {
                let instance = running[rng.random_range(0..running.len())];
                // Half the stops outlast the lease, so another instance takes the rows over.
                let max = lease.as_millis() as u64 + 3000;
                let for_ = Duration::from_millis(rng.random_range(500..max));
                stopped_until[instance] = at + for_;
                Fault::Stop { instance, for_ }
            }
            2 => Fault::Terminate,
            _ => Fault::Restart,
        };
        plan.push(Planned { at, fault });
        at += Duration::from_millis(rng.random_range(2000..6000));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_answers_and_faults() {
        let lease = Duration::from_secs(5);
        let a = schedule(7, Duration::from_secs(60), 3, lease);
        assert_eq!(a, schedule(7, Duration::from_secs(60), 3, lease));
        assert_ne!(a, schedule(8, Duration::from_secs(60), 3, lease));
        let answers = |seed| {
            (1..200)
                .map(|id| behaviour(seed, id, 1))
                .collect::<Vec<_>>()
        };
        assert_eq!(answers(7), answers(7));
        assert_ne!(answers(7), answers(8));
    }

    #[test]
    fn a_short_run_has_every_kind_of_fault_and_ends_quiet() {
        let lease = Duration::from_secs(5);
        let plan = schedule(3, Duration::from_secs(40), 3, lease);
        let has = |f: fn(&Fault) -> bool| plan.iter().any(|p| f(&p.fault));
        assert!(has(|f| matches!(f, Fault::Kill { .. })));
        assert!(has(|f| matches!(f, Fault::Stop { .. })));
        assert!(has(|f| matches!(f, Fault::Terminate)));
        assert!(has(|f| matches!(f, Fault::Restart)));
        assert!(plan.iter().all(|p| p.at < Duration::from_secs(33)));
    }

    #[test]
    fn a_stopped_instance_is_not_touched_until_it_is_continued() {
        for seed in 0..50 {
            let plan = schedule(seed, Duration::from_secs(300), 2, Duration::from_secs(5));
            for (i, p) in plan.iter().enumerate() {
                let Fault::Stop { instance, for_ } = p.fault else {
                    continue;
                };
                for later in &plan[i + 1..] {
                    if later.at >= p.at + for_ {
                        break;
                    }
                    match later.fault {
                        Fault::Kill { instance: j, .. } | Fault::Stop { instance: j, .. } => {
                            assert_ne!(j, instance, "seed {seed}: {later:?} during {p:?}")
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    #[test]
    fn every_behaviour_occurs() {
        let all: Vec<_> = (1..2000).map(|id| behaviour(11, id, 1)).collect();
        assert!(all.contains(&Behaviour::Accept));
        assert!(all.contains(&Behaviour::ServerError));
        assert!(all.iter().any(|b| matches!(b, Behaviour::Throttle { .. })));
        assert!(all.contains(&Behaviour::Slow));
        assert!(all.contains(&Behaviour::Reset));
        assert!(all.contains(&Behaviour::AcceptThenHang));
    }

    #[test]
    fn a_429_is_followed_by_a_fresh_draw() {
        // The daemon resends a throttled message with the same attempt
        // number; the provider's next request for it must not be bound to 429.
        let throttled: Vec<i64> = (1..5000)
            .filter(|&id| matches!(behaviour(5, id, 1), Behaviour::Throttle { .. }))
            .collect();
        assert!(!throttled.is_empty());
        for id in throttled {
            let next =
                (2..20).find(|&nth| !matches!(behaviour(5, id, nth), Behaviour::Throttle { .. }));
            assert!(next.is_some(), "sms {id}: 19 429s in a row");
        }
        let repeats = (1..5000)
            .filter(|&id| {
                matches!(behaviour(5, id, 1), Behaviour::Throttle { .. })
                    && matches!(behaviour(5, id, 2), Behaviour::Throttle { .. })
            })
            .count();
        assert!(repeats < 10, "{repeats} messages got two 429s in a row");
    }
}
