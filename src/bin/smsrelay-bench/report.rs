//! Runs the sections asked for, checks their counts, prints the tables and
//! writes the JSON report.

use anyhow::Context;
use serde_json::json;

use crate::Args;
use crate::burndown::BurnDown;
use crate::ceiling::Ceiling;
use crate::latency::Latency;
use crate::provider::Provider;

/// CPU seconds per 1,000 messages.
fn per_1k(seconds: f64, messages: i64) -> String {
    format!("{:.3}", seconds * 1000.0 / messages as f64)
}

/// The machine and the PostgreSQL settings that move these numbers.
async fn environment(args: &Args) -> anyhow::Result<serde_json::Value> {
    let pool = crate::database::connect(&args.database_url, 1).await?;
    let (version, sync, buffers): (String, String, String) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('synchronous_commit'),
                current_setting('shared_buffers')",
    )
    .fetch_one(&pool)
    .await?;
    pool.close().await;
    Ok(json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "postgresql": version,
        "synchronous_commit": sync,
        "shared_buffers": buffers,
        "daemon": crate::daemon::binary()?.display().to_string(),
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
    }))
}

fn burndown_row(name: &str, b: &BurnDown, ratio: String) -> Vec<String> {
    vec![
        name.to_owned(),
        b.messages.to_string(),
        format!("{:.2}", b.seconds),
        format!("{:.0}", b.per_second),
        ratio,
        per_1k(b.daemon_cpu_seconds, b.messages),
        b.db_cpu_seconds
            .map_or("-".into(), |s| per_1k(s, b.messages)),
        format!("{:.1}", b.daemon_peak_rss_kib as f64 / 1024.0),
        b.provider_requests.to_string(),
        b.duplicate_requests.to_string(),
    ]
}

/// Returns whether every count was right.
pub async fn run(args: &Args) -> anyhow::Result<bool> {
    let environment = environment(args).await?;
    let logs = std::path::PathBuf::from("target/bench");
    std::fs::create_dir_all(&logs).context("create target/bench")?;
    let provider = Provider::start().await?;
    let mut ok = true;

    let ceiling: Option<Ceiling> = if args.runs("ceiling") {
        eprintln!("smsrelay-bench: ceiling, {} messages", args.messages);
        let c = crate::ceiling::run(args).await?;
        if c.sent != c.messages {
            eprintln!(
                "smsrelay-bench: WRONG COUNT: ceiling sent {} of {}",
                c.sent, c.messages
            );
            ok = false;
        }
        Some(c)
    } else {
        None
    };
    let mut burndowns: Vec<BurnDown> = Vec::new();
    if args.runs("burndown") {
        let rows = if args.growth_rows > 0 {
            vec![0, args.growth_rows]
        } else {
            vec![0]
        };
        for growth in rows {
            eprintln!(
                "smsrelay-bench: burn-down, {} messages, {growth} finished rows before",
                args.messages
            );
            let b = crate::burndown::run(args, &provider, &logs, growth).await?;
            if !b.counts_ok() {
                eprintln!(
                    "smsrelay-bench: WRONG COUNT: burn-down sent {} of {}, provider got {} requests for {} ids ({} duplicates)",
                    b.sent,
                    b.messages,
                    b.provider_requests,
                    b.provider_distinct_ids,
                    b.duplicate_requests
                );
                ok = false;
            }
            burndowns.push(b);
        }
    }
    let latency: Option<Latency> = if args.runs("latency") {
        eprintln!(
            "smsrelay-bench: latency, {} msgs/s for {:?}",
            args.rate, args.latency_duration
        );
        let l = crate::latency::run(args, &provider, &logs).await?;
        if !l.counts_ok() {
            eprintln!(
                "smsrelay-bench: WRONG COUNT: latency sent {} of {}, provider got {} requests ({} duplicates)",
                l.sent, l.messages, l.provider_requests, l.duplicate_requests
            );
            ok = false;
        }
        Some(l)
    } else {
        None
    };

    let mut table = Table::new(&[
        "section",
        "messages",
        "seconds",
        "msgs/s",
        "of ceiling",
        "daemon CPU s / 1k",
        "DB CPU s / 1k",
        "daemon peak RSS MiB",
        "provider requests",
        "duplicates",
    ]);
    if let Some(c) = &ceiling {
        table.row(vec![
            format!("ceiling (SQL only, {} connections)", c.connections),
            c.messages.to_string(),
            format!("{:.2}", c.seconds),
            format!("{:.0}", c.per_second),
            "100%".into(),
            "-".into(),
            c.db_cpu_seconds
                .map_or("-".into(), |s| per_1k(s, c.messages)),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    let of_ceiling = |rate: f64| {
        ceiling.as_ref().map_or("-".into(), |c| {
            format!("{:.0}%", 100.0 * rate / c.per_second)
        })
    };
    let empty_rate = burndowns.first().map(|b| b.per_second);
    for b in &burndowns {
        let name = if b.finished_rows_before == 0 {
            "burn-down (smsrelay run)".to_owned()
        } else {
            format!(
                "burn-down, {} finished rows ({:.2}x the empty run)",
                b.finished_rows_before,
                b.per_second / empty_rate.unwrap_or(b.per_second)
            )
        };
        table.row(burndown_row(&name, b, of_ceiling(b.per_second)));
    }
    println!("\n{}\n", environment);
    println!("{}", table.render());
    if let Some(l) = &latency {
        let mut t = Table::new(&[
            "offered msgs/s",
            "inserted msgs/s",
            "seconds",
            "messages",
            "late inserts",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms",
            "provider requests",
            "duplicates",
        ]);
        t.row(vec![
            l.offered_per_second.to_string(),
            format!("{:.0}", l.inserted_per_second),
            format!("{:.1}", l.seconds),
            l.messages.to_string(),
            l.late_inserts.to_string(),
            format!("{:.1}", l.p50_ms),
            format!("{:.1}", l.p90_ms),
            format!("{:.1}", l.p99_ms),
            format!("{:.1}", l.max_ms),
            l.provider_requests.to_string(),
            l.duplicate_requests.to_string(),
        ]);
        println!("Insert-to-provider latency:\n\n{}", t.render());
    }
    for b in burndowns.iter().filter_map(|b| b.claim_plan.as_ref()) {
        println!("Claim plan with the finished rows present:\n\n{b}\n");
    }

    let report = json!({
        "environment": environment,
        "counts_ok": ok,
        "ceiling": ceiling,
        "burndown": burndowns.iter().find(|b| b.finished_rows_before == 0),
        "growth": burndowns.iter().find(|b| b.finished_rows_before > 0).map(|g| json!({
            "run": g,
            "ratio_to_empty": g.per_second / empty_rate.unwrap_or(g.per_second),
        })),
        "burndown_of_ceiling": match (&ceiling, burndowns.first()) {
            (Some(c), Some(b)) => Some(b.per_second / c.per_second),
            _ => None,
        },
        "latency": latency,
    });
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("write {}", args.json.display()))?;
    eprintln!("smsrelay-bench: report written to {}", args.json.display());
    Ok(ok)
}

/// A Markdown table with aligned columns, so that it pastes into the README.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .chain(std::iter::once(&self.header[c]))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut out = String::from("|");
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map_or("", String::as_str);
                // The first column is a name; the others are numbers.
                if c == 0 {
                    out.push_str(&format!(" {cell:<w$} |"));
                } else {
                    out.push_str(&format!(" {cell:>w$} |"));
                }
            }
            out.push('\n');
            out
        };
        let mut out = line(&self.header);
        out.push('|');
        for (c, w) in widths.iter().enumerate() {
            let dashes = "-".repeat(w + 1);
            out.push_str(&if c == 0 {
                format!("{dashes}-|")
            } else {
                format!("{dashes}:|")
            });
        }
        out.push('\n');
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}
