//! The daemon under test: the real `smsrelay` binary as a child process, so
//! that its CPU and peak RSS are its own (from /proc), not shared with the
//! provider and the inserter that run in the bench process.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// `SMSRELAY_BIN`, or the `smsrelay` built next to this binary.
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("SMSRELAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary has no directory")?
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

/// The settings the bench needs; every other setting is the daemon's
/// default, or an SMSRELAY_* variable of the bench's own environment.
fn command(
    binary: &PathBuf,
    db_url: &str,
    provider_url: &str,
    concurrency: Option<u32>,
) -> Command {
    let mut command = Command::new(binary);
    command
        .env("SMSRELAY_DATABASE__URL", db_url)
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider_url)
        .env("SMSRELAY_API__ENABLED", "false")
        .env("SMSRELAY_DISPATCH__INSTANCE_ID", "bench")
        .stdin(Stdio::null());
    if let Some(c) = concurrency {
        command.env("SMSRELAY_DISPATCH__CONCURRENCY", c.to_string());
    }
    command
}

/// `smsrelay migrate` on the fresh database.
pub fn migrate(db_url: &str) -> anyhow::Result<()> {
    let out = command(&binary()?, db_url, "http://127.0.0.1:9/", None)
        .arg("migrate")
        .output()
        .context("run smsrelay migrate")?;
    if !out.status.success() {
        bail!(
            "smsrelay migrate failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A running `smsrelay run`; killed if dropped before [`Daemon::stop`].
pub struct Daemon {
    child: Child,
}

/// What /proc says of the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
}

impl Daemon {
    /// Starts `smsrelay run`; its log goes to `log`.
    pub fn start(
        db_url: &str,
        provider_url: &str,
        concurrency: Option<u32>,
        log: &std::path::Path,
    ) -> anyhow::Result<Daemon> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = command(&binary()?, db_url, provider_url, concurrency)
            .arg("run")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start smsrelay run")?;
        Ok(Daemon { child })
    }

    /// Fails if the daemon exited (it should not before we stop it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("smsrelay run exited on its own ({status}); see its log");
        }
        Ok(())
    }

    /// CPU (all threads) and peak RSS so far.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let pid = self.child.id();
        let cpu_seconds = crate::database::cpu_seconds(pid, crate::database::ticks_per_second())
            .context("read the daemon's /proc/<pid>/stat")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmHWM in the daemon's /proc/<pid>/status")?;
        Ok(Usage {
            cpu_seconds,
            peak_rss_kib,
        })
    }

    /// SIGTERM; an error if it has not exited cleanly within `grace` (dropping it then kills it).
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("smsrelay run exited with {status} at SIGTERM");
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("smsrelay run still running {grace:?} after SIGTERM")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
