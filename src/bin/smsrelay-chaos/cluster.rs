//! A throwaway PostgreSQL cluster the run may restart at will: initdb into a
//! temporary directory, one port on 127.0.0.1, stopped and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

/// The newest PostgreSQL binaries under /usr/lib/postgresql/*/bin.
fn find_bin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL binaries: cannot read /usr/lib/postgresql (install postgresql)")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb and pg_ctl under /usr/lib/postgresql/*/bin (install postgresql)")
}

/// initdb and pg_ctl refuse to run as root: run them as the `postgres` user then.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command.current_dir("/");
        command
    } else {
        Command::new(program)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Cluster {
    /// initdb + start. The directory is made under /tmp, owned by `postgres` when we are root.
    pub fn start() -> anyhow::Result<Self> {
        let bin = find_bin()?;
        let dir = std::env::temp_dir().join(format!(
            "smsrelay-chaos-pg.{}.{}",
            std::process::id(),
            crate::now_ms()
        ));
        std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut cluster = Self { bin, dir, port: 0 };
        if is_root() {
            let mut chown = Command::new("chown");
            chown.arg("postgres:").arg(&cluster.dir);
            run(chown, "chown of the cluster directory to postgres")?;
        }
        let mut initdb = as_postgres(&cluster.bin.join("initdb"));
        initdb.arg("-D").arg(cluster.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        run(initdb, "initdb")?;
        let mut last = None;
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        // synchronous_commit stays on: an immediate restart must not lose
        // what was committed. fsync off is safe here (the OS does not crash).
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut start = as_postgres(&self.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(start, "pg_ctl start")
    }

    /// `pg_ctl restart -m immediate`: every backend dies at once, crash recovery at start.
    pub fn restart_immediate(&self) -> anyhow::Result<()> {
        let mut restart = as_postgres(&self.bin.join("pg_ctl"));
        restart
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-m", "immediate", "restart"]);
        run(restart, "pg_ctl restart -m immediate")
    }

    /// The admin URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = as_postgres(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "30", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = stop.status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
