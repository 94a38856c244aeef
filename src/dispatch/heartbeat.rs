//! Proof of life for the systemd watchdog. A ping means "the dispatcher loop
//! is making progress": the loop reports each step it completes (a cycle, a
//! finished send, a database call that returned, a slice of a wait), and while
//! a step is under way a ticker pings only as long as that step is within the
//! time a step may take. A loop stuck on one call stops pinging, and systemd
//! restarts it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Feeds the watchdog on the loop's progress.
pub struct Heartbeat<'a> {
    ping: &'a (dyn Fn() + Sync),
    /// How often to ping (a quarter of the watchdog interval).
    every: Duration,
    /// The longest one step may take before the loop counts as wedged.
    stall_after: Duration,
    last_progress: Mutex<Instant>,
    last_ping: Mutex<Option<Instant>>,
    /// A stall seen by [`Self::pulse`] was logged (until the next progress).
    warned: std::sync::atomic::AtomicBool,
    /// Steps under way in [`Self::during`] (the loops run side by side): while
    /// one is, an idle loop's pulse is no progress.
    steps: std::sync::atomic::AtomicUsize,
}

/// Counts a step as under way until dropped (also when the step is cancelled).
struct UnderWay<'h>(&'h std::sync::atomic::AtomicUsize);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<'a> Heartbeat<'a> {
    pub fn new(ping: &'a (dyn Fn() + Sync), every: Duration, stall_after: Duration) -> Self {
        Self {
            ping,
            every,
            stall_after,
            last_progress: Mutex::new(Instant::now()),
            last_ping: Mutex::new(None),
            warned: std::sync::atomic::AtomicBool::new(false),
            steps: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How often the loop must report while it waits.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The loop completed a step: it is alive.
    pub fn progress(&self) {
        let now = Instant::now();
        if let Ok(mut last) = self.last_progress.lock() {
            *last = now;
        }
        self.warned
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.ping_at_most_every(now, self.every / 2);
    }

    /// Runs `step` (a send batch, a database call), pinging while it is
    /// within `stall_after` of the last progress; reports progress when it ends.
    pub async fn during<F: std::future::Future>(&self, step: F) -> F::Output {
        self.steps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _under_way = UnderWay(&self.steps);
        tokio::pin!(step);
        let mut ticks = tokio::time::interval(self.every);
        let mut warned = false;
        let output = loop {
            tokio::select! {
                output = &mut step => break output,
                _ = ticks.tick() => {
                    let since = self.since_progress();
                    if since <= self.stall_after {
                        self.ping_at_most_every(Instant::now(), Duration::ZERO);
                    } else if !warned {
                        warned = true;
                        tracing::error!(
                            stalled_for = ?since,
                            "dispatcher made no progress for longer than a step may take; no longer feeding the watchdog"
                        );
                    }
                }
            }
        };
        self.progress();
        output
    }

    /// A periodic check from a loop that waits on many steps at once: while
    /// `busy` (sends in flight) or a step is under way elsewhere, pings only
    /// as long as the last progress is within the time a step may take;
    /// otherwise the loop is idle, which is progress.
    pub fn pulse(&self, busy: bool) {
        if !busy && self.steps.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return self.progress();
        }
        let since = self.since_progress();
        if since <= self.stall_after {
            self.ping_at_most_every(Instant::now(), self.every / 2);
        } else if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(
                stalled_for = ?since,
                "dispatcher made no progress for longer than a step may take; no longer feeding the watchdog"
            );
        }
    }

    /// Waits `wait` (or until `until` completes), reporting progress every
    /// `every`: a wait is the loop doing what it should.
    pub async fn wait<F: std::future::Future>(&self, wait: Duration, until: F) {
        let end = Instant::now() + wait;
        tokio::pin!(until);
        loop {
            self.progress();
            let now = Instant::now();
            if now >= end {
                return;
            }
            let slice = (end - now).min(self.every);
            tokio::select! {
                _ = &mut until => return,
                _ = tokio::time::sleep(slice) => {}
            }
        }
    }

    fn since_progress(&self) -> Duration {
        self.last_progress
            .lock()
            .map(|last| last.elapsed())
            .unwrap_or_default()
    }

    fn ping_at_most_every(&self, now: Instant, min_gap: Duration) {
        let Ok(mut last) = self.last_ping.lock() else {
            return;
        };
        if last.is_none_or(|at| now.duration_since(at) >= min_gap) {
            *last = Some(now);
            (self.ping)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const EVERY: Duration = Duration::from_millis(20);
    const STALL: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn a_step_that_never_ends_stops_the_pings() {
        let pings = Mutex::new(Vec::new());
        let ping = || pings.lock().unwrap().push(Instant::now());
        let started = Instant::now();
        let heartbeat = Heartbeat::new(&ping, EVERY, STALL);
        let wedged =
            tokio::time::timeout(STALL * 4, heartbeat.during(std::future::pending::<()>()));
        assert!(wedged.await.is_err());
        let pings = pings.lock().unwrap();
        assert!(
            pings.len() >= 3,
            "pings while the step is young: {}",
            pings.len()
        );
        let last = pings.last().unwrap().duration_since(started);
        assert!(
            last <= STALL + EVERY * 2,
            "last ping {last:?} after the start"
        );
    }

    #[tokio::test]
    async fn an_idle_loop_beside_a_step_that_never_ends_does_not_keep_the_pings_going() {
        let pings = Mutex::new(Vec::new());
        let ping = || pings.lock().unwrap().push(Instant::now());
        let started = Instant::now();
        let heartbeat = Heartbeat::new(&ping, EVERY, STALL);
        let idle_loop = async {
            loop {
                tokio::time::sleep(EVERY).await;
                heartbeat.pulse(false);
            }
        };
        let wedged = async {
            tokio::join!(heartbeat.during(std::future::pending::<()>()), idle_loop);
        };
        assert!(tokio::time::timeout(STALL * 4, wedged).await.is_err());
        let last = pings
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .duration_since(started);
        assert!(
            last <= STALL + EVERY * 2,
            "last ping {last:?} after the start"
        );
    }

    #[tokio::test]
    async fn a_wait_keeps_pinging() {
        let pings = AtomicUsize::new(0);
        let ping = || {
            pings.fetch_add(1, Ordering::SeqCst);
        };
        let heartbeat = Heartbeat::new(&ping, EVERY, STALL);
        heartbeat
            .wait(STALL * 4, std::future::pending::<()>())
            .await;
        // One ping per half interval at most, one per interval at least.
        let count = pings.load(Ordering::SeqCst);
        assert!((20..=80).contains(&count), "{count} pings");
    }
}
