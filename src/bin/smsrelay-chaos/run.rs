//! One run: set up, enqueue while injecting the faults, let the queue settle, judge.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::Args;
use crate::checks::{Evidence, Rules, judge};
use crate::cluster::Cluster;
use crate::fleet::{Fleet, InstanceConfig};
use crate::provider::FaultyProvider;
use crate::seeded::{Fault, schedule};

/// The daemons' settings: short enough that a crash is recovered in seconds.
const LEASE: Duration = Duration::from_secs(5);
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_ATTEMPTS: i64 = 8;
const CONCURRENCY: i64 = 8;

fn daemon_env(url: &str, guarantee: &str) -> Vec<(String, String)> {
    [
        ("SMSRELAY_DATABASE__URL", url),
        ("SMSRELAY_DATABASE__CONNECT_TIMEOUT", "2s"),
        // Under a third of the lease, as the daemon requires (1.5 x call_timeout < lease).
        ("SMSRELAY_DATABASE__CALL_TIMEOUT", "3s"),
        ("SMSRELAY_DATABASE__POOL_SIZE", "4"),
        ("SMSRELAY_DISPATCH__LEASE", &format!("{}s", LEASE.as_secs())),
        ("SMSRELAY_DISPATCH__BATCH_SIZE", "16"),
        ("SMSRELAY_DISPATCH__CONCURRENCY", &CONCURRENCY.to_string()),
        ("SMSRELAY_DISPATCH__POLL_INTERVAL", "200ms"),
        ("SMSRELAY_DISPATCH__BACKOFF_INITIAL", "200ms"),
        ("SMSRELAY_DISPATCH__BACKOFF_MAX", "2s"),
        ("SMSRELAY_DISPATCH__MAX_ATTEMPTS", &MAX_ATTEMPTS.to_string()),
        ("SMSRELAY_DISPATCH__SHUTDOWN_GRACE", "2s"),
        ("SMSRELAY_DISPATCH__GUARANTEE", guarantee),
        ("SMSRELAY_HOUSEKEEPING__REAPER", "* * * * * *"),
        ("SMSRELAY_PROVIDER__KIND", "webhook"),
        (
            "SMSRELAY_PROVIDER__TIMEOUT",
            &format!("{}ms", PROVIDER_TIMEOUT.as_millis()),
        ),
        ("SMSRELAY_API__ENABLED", "false"),
        ("SMSRELAY_LOG__LEVEL", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// `SMSRELAY_BIN`, or the `smsrelay` built next to this binary.
fn daemon_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("SMSRELAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .context("the chaos binary has no directory")?
            .join("smsrelay"),
    };
    if !path.is_file() {
        bail!(
            "daemon binary {} not found: build it (cargo build --release) or set SMSRELAY_BIN",
            path.display()
        );
    }
    Ok(path)
}

/// What the faults did, for the summary line.
#[derive(Debug, Default)]
struct Injected {
    kills: u32,
    stops: u32,
    terminations: u32,
    restarts: u32,
    unexpected_exits: Vec<String>,
}

/// A step of the schedule: the faults, with their ends (restart, SIGCONT) as steps of their own.
enum Step {
    Kill(usize),
    Start(usize),
    Stop(usize),
    Resume(usize),
    Terminate,
    Restart,
}

fn steps(plan: &[crate::seeded::Planned]) -> Vec<(Duration, Step)> {
    let mut steps = Vec::new();
    for p in plan {
        match p.fault {
            Fault::Kill {
                instance,
                restart_after,
            } => {
                steps.push((p.at, Step::Kill(instance)));
                steps.push((p.at + restart_after, Step::Start(instance)));
            }
            Fault::Stop { instance, for_ } => {
                steps.push((p.at, Step::Stop(instance)));
                steps.push((p.at + for_, Step::Resume(instance)));
            }
            Fault::Terminate => steps.push((p.at, Step::Terminate)),
            Fault::Restart => steps.push((p.at, Step::Restart)),
        }
    }
    steps.sort_by_key(|(at, _)| *at);
    steps
}

/// Returns whether every check held.
pub async fn run(args: &Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mode = args.guarantee.as_str();
    let artifacts = args
        .artifacts
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/seed-{}-{mode}", args.seed)));
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("create {}", artifacts.display()))?;
    let binary = daemon_binary()?;

    let cluster = Cluster::start()?;
    crate::outbox::create_outbox(&cluster.url("postgres")).await?;
    let url = cluster.url("outbox");
    let env = daemon_env(&url, mode);
    let migrate = std::process::Command::new(&binary)
        .arg("migrate")
        .envs(env.iter().map(|(k, v)| (k, v)))
        // Not used by migrate, but the provider section must be complete.
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", "http://127.0.0.1:9/")
        .output()
        .context("smsrelay migrate")?;
    if !migrate.status.success() {
        bail!(
            "smsrelay migrate failed: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
    }
    let pool = crate::outbox::connect(&url).await?;

    let provider = FaultyProvider::start(args.seed, PROVIDER_TIMEOUT).await?;
    let port = provider.port;
    let url_of =
        move |i: usize, generation: u32| format!("http://127.0.0.1:{port}/sms/{i}/{generation}");
    let config = InstanceConfig {
        binary,
        logs: artifacts.clone(),
        env,
    };
    let mut fleet = Fleet::start(config, args.instances, Box::new(url_of))?;

    // The platform enqueues over the first two thirds of the run.
    let enqueuer = {
        let pool = pool.clone();
        let (messages, window) = (args.messages, args.duration * 2 / 3);
        tokio::spawn(async move {
            let chunks = messages.min(40);
            for c in 0..chunks {
                let from = c * messages / chunks + 1;
                let to = (c + 1) * messages / chunks;
                crate::outbox::enqueue(&pool, from, to).await?;
                tokio::time::sleep(window / chunks as u32).await;
            }
            anyhow::Ok(())
        })
    };

    let plan = schedule(args.seed, args.duration, args.instances, LEASE);
    let mut injected = Injected::default();
    let t0 = Instant::now();
    for (at, step) in steps(&plan) {
        tokio::time::sleep_until((t0 + at).into()).await;
        if let Some((i, status)) = fleet.exited() {
            injected
                .unexpected_exits
                .push(format!("instance {i}: {status}"));
            fleet.restart(i)?;
        }
        match step {
            Step::Kill(i) => {
                fleet.kill(i)?;
                injected.kills += 1;
            }
            Step::Start(i) => fleet.restart(i)?,
            Step::Stop(i) => {
                fleet.stop(i)?;
                injected.stops += 1;
            }
            Step::Resume(i) => fleet.resume(i)?,
            Step::Terminate => {
                crate::outbox::terminate_daemons(&pool).await?;
                injected.terminations += 1;
            }
            Step::Restart => {
                let cluster = &cluster;
                tokio::task::block_in_place(|| cluster.restart_immediate())?;
                injected.restarts += 1;
            }
        }
    }
    tokio::time::sleep_until((t0 + args.duration).into()).await;
    enqueuer.await.context("the enqueuer")??;

    // Settle: every message final, or the timeout.
    let deadline = Instant::now() + args.settle_timeout;
    loop {
        if let Some((i, status)) = fleet.exited() {
            injected
                .unexpected_exits
                .push(format!("instance {i}: {status}"));
            fleet.restart(i)?;
        }
        if let Ok((rows, open)) = crate::outbox::progress(&pool).await
            && rows >= args.messages
            && open == 0
        {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "smsrelay-chaos: not every message is final after {:?}; judging anyway",
                args.settle_timeout
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::task::block_in_place(|| fleet.shutdown(Duration::from_secs(10)));

    let (messages, events, attempts) = crate::outbox::history(&pool).await?;
    let requests = provider.requests();
    let evidence = Evidence {
        inserted: args.messages,
        messages,
        events,
        attempts,
        requests,
        stops: fleet.stops.clone(),
    };
    let disruptions =
        i64::from(injected.kills + injected.stops + injected.terminations + injected.restarts);
    let rules = Rules {
        guarantee: args.guarantee,
        max_attempts: MAX_ATTEMPTS,
        concurrency: CONCURRENCY,
        disruptions,
    };
    let verdict = judge(&evidence, &rules);
    write_artifacts(&artifacts, &evidence, &verdict)?;

    for v in verdict.violations.iter().take(30) {
        eprintln!("smsrelay-chaos: VIOLATION {v}");
    }
    if verdict.violations.len() > 30 {
        eprintln!(
            "smsrelay-chaos: ... {} violations in all, listed in {}",
            verdict.violations.len(),
            artifacts.join("violations.txt").display()
        );
    }
    for exit in &injected.unexpected_exits {
        eprintln!("smsrelay-chaos: VIOLATION an instance exited on its own: {exit}");
    }
    let violations = verdict.violations.len() + injected.unexpected_exits.len();
    let after = |outcome: &str| verdict.duplicates_after.get(outcome).copied().unwrap_or(0);
    let pass = violations == 0;
    println!(
        "smsrelay-chaos seed={} mode={mode} messages={} instances={} kills={} stops={} terminations={} restarts={} requests={} sent={} failed={} declined={} duplicates={} dup_after_unknown={} dup_after_abandoned={} dup_after_interrupted={} ambiguous={} lost={} violations={violations} verdict={} elapsed={}s",
        args.seed,
        args.messages,
        args.instances,
        injected.kills,
        injected.stops,
        injected.terminations,
        injected.restarts,
        evidence.requests.len(),
        verdict.sent,
        verdict.failed,
        verdict.declined,
        verdict.duplicates,
        after("unknown"),
        after("abandoned"),
        after("interrupted"),
        verdict.ambiguous,
        verdict.lost,
        if pass { "PASS" } else { "FAIL" },
        started.elapsed().as_secs(),
    );
    drop(fleet);
    drop(provider);
    pool.close().await;
    drop(cluster);
    Ok(pass)
}

/// The provider's log (JSON lines) and every violation, kept after the run for a look.
fn write_artifacts(
    dir: &std::path::Path,
    evidence: &Evidence,
    verdict: &crate::checks::Verdict,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut log = std::io::BufWriter::new(std::fs::File::create(dir.join("provider.jsonl"))?);
    for r in &evidence.requests {
        serde_json::to_writer(&mut log, r)?;
        log.write_all(b"\n")?;
    }
    log.flush()?;
    let text: String = verdict
        .violations
        .iter()
        .map(|v| format!("{v}\n"))
        .collect();
    std::fs::write(dir.join("violations.txt"), text)?;
    Ok(())
}
