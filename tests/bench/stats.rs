//! Latency summaries and the plain-text tables the benchmarks print.

use std::time::Duration;

/// Percentiles of a series of timings, and its rate.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Completed operations per second of wall-clock time.
    pub per_second: f64,
}

/// Summarises `samples` taken over `wall` of wall-clock time (nearest-rank percentiles).
pub fn summarize(samples: &[Duration], wall: Duration) -> Summary {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = |p: f64| -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    Summary {
        count: sorted.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: sorted.last().copied().unwrap_or_default(),
        per_second: if wall.is_zero() {
            0.0
        } else {
            sorted.len() as f64 / wall.as_secs_f64()
        },
    }
}

/// The machine and the PostgreSQL settings that move these numbers, for the report.
pub async fn environment(pool: &sqlx::PgPool) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (version, shared_buffers, sync, jit): (String, String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('shared_buffers'),
                current_setting('synchronous_commit'), current_setting('jit')",
    )
    .fetch_one(pool)
    .await
    .expect("settings");
    format!(
        "{cores} cores; PostgreSQL {version} on the same machine (shared_buffers {shared_buffers}, \
         synchronous_commit {sync}, jit {jit})"
    )
}

/// Milliseconds with two decimals (or one past 100 ms).
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.2}")
    }
}

/// A table printed with aligned columns, as Markdown so it pastes into the README.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as Markdown; text columns left-aligned, numbers right-aligned.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .chain(std::iter::once(&self.header[c]))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..columns).map(width).collect();
        let numeric = |c: usize| {
            self.rows.iter().all(|r| {
                r.get(c).is_some_and(|s| {
                    s.chars()
                        .all(|ch| ch.is_ascii_digit() || ".,-/ %x".contains(ch))
                })
            })
        };
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                if numeric(c) {
                    out.push_str(&format!(" {cell:>w$} |"));
                } else {
                    out.push_str(&format!(" {cell:<w$} |"));
                }
            }
            out
        };
        let mut out = line(&self.header);
        out.push('\n');
        out.push('|');
        for (c, w) in widths.iter().enumerate() {
            if numeric(c) {
                out.push_str(&format!("{}:|", "-".repeat(w + 1)));
            } else {
                out.push_str(&format!("{}|", "-".repeat(w + 2)));
            }
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
            out.push('\n');
        }
        out
    }
}

#[test]
fn nearest_rank_percentiles() {
    let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
    let s = summarize(&samples, Duration::from_secs(2));
    assert_eq!(s.p50, Duration::from_millis(50));
    assert_eq!(s.p90, Duration::from_millis(90));
    assert_eq!(s.p99, Duration::from_millis(99));
    assert_eq!(s.max, Duration::from_millis(100));
    assert_eq!(s.per_second, 50.0);
}
