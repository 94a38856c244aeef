//! The bench's own database work: a fresh database per section on the
//! server of `--database-url`, the platform's INSERTs, completion checks, and
//! the CPU of the PostgreSQL backends that served the section (from /proc,
//! when the server runs on this machine).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions};
use tokio_util::sync::CancellationToken;

/// Our own sessions carry this name, so that their CPU is not counted as the daemon's load.
pub const APPLICATION: &str = "smsrelay-bench";

/// A fresh database, dropped by [`FreshDb::drop_now`].
pub struct FreshDb {
    admin: PgPool,
    pub name: String,
    /// The URL of the fresh database, for the daemon.
    pub url: String,
    /// A pool of our own on it (inserts, checks).
    pub pool: PgPool,
}

pub async fn connect(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| "--database-url / DATABASE_URL is not a PostgreSQL URL")?
        .application_name(APPLICATION)
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?)
}

/// `url` with its database replaced by `db`.
fn url_of(url: &str, db: &str) -> anyhow::Result<String> {
    let mut parsed = reqwest::Url::parse(url).context("--database-url is not a URL")?;
    parsed.set_path(&format!("/{db}"));
    Ok(parsed.to_string())
}

impl FreshDb {
    pub async fn create(admin_url: &str, section: &str) -> anyhow::Result<FreshDb> {
        let admin = connect(admin_url, 1)
            .await
            .context("connect to the PostgreSQL of --database-url / DATABASE_URL")?;
        let name = format!("smsrelay_bench_{section}_{}", std::process::id());
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        sqlx::raw_sql(AssertSqlSafe(drop)).execute(&admin).await?;
        let create = format!("CREATE DATABASE {name}");
        sqlx::raw_sql(AssertSqlSafe(create))
            .execute(&admin)
            .await
            .with_context(|| format!("create database {name}"))?;
        let url = url_of(admin_url, &name)?;
        let pool = connect(&url, 4).await?;
        Ok(FreshDb {
            admin,
            name,
            url,
            pool,
        })
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(&self.admin)
            .await
        {
            eprintln!("smsrelay-bench: could not drop database {}: {e}", self.name);
        }
        self.admin.close().await;
    }

    /// `n` due messages, one segment each, in one INSERT ... SELECT (the
    /// platform's columns only; the numbers are valid Kenyan mobiles).
    pub async fn insert_messages(&self, n: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO sms (client_id, mobile_no, message)
             SELECT g, '+254 711 ' || lpad((g % 1000000)::text, 6, '0'),
                    'Dear client, your repayment of 1,250.00 is due on 2026-12-01. Ref ' || g
             FROM generate_series(1, $1::bigint) g",
        )
        .bind(n)
        .execute(&self.pool)
        .await
        .context("pre-insert the messages")?;
        sqlx::raw_sql("VACUUM ANALYZE sms")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Rows not final yet (`pending` or `sending`); both have partial indexes, so this is cheap.
    pub async fn unfinished(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM sms WHERE status = 'pending')
                  + (SELECT count(*) FROM sms WHERE status = 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Rows per status.
    pub async fn statuses(&self) -> anyhow::Result<HashMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM sms GROUP BY status")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }
}

/// utime + stime of a process, in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second)
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
pub fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Samples the CPU of every backend of one database but ours, every 100 ms,
/// keeping the last figure of each (a backend's CPU only grows), so that
/// backends that come and go are counted up to their last sample.
pub struct BackendCpu {
    seen: Arc<Mutex<HashMap<i32, f64>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<bool>,
}

impl BackendCpu {
    pub fn start(db: &FreshDb) -> BackendCpu {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let (pool, name) = (db.pool.clone(), db.name.clone());
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let ticks = ticks_per_second();
        let task = tokio::spawn(async move {
            let mut local = true;
            loop {
                let pids: Vec<i32> = sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name <> $2",
                )
                .bind(&name)
                .bind(APPLICATION)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                for pid in pids {
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.trim() != "postgres" {
                        // Not this machine's process: the server is elsewhere.
                        local = false;
                        continue;
                    }
                    if let Some(cpu) = cpu_seconds(pid as u32, ticks) {
                        seen2
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(pid, cpu);
                    }
                }
                if stop2.is_cancelled() {
                    return local;
                }
                // Cancelled: one more sample, then out.
                tokio::select! {
                    _ = stop2.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        BackendCpu { seen, stop, task }
    }

    /// CPU seconds of the backends seen; `None` when the server is not on this machine.
    pub async fn finish(self) -> Option<f64> {
        self.stop.cancel();
        let local = self.task.await.unwrap_or(false);
        let total: f64 = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum();
        local.then_some(total)
    }
}
