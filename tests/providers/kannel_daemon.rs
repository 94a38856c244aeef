//! The `smsrelay` binary configured for Kannel the way the README shows, with
//! the password from an environment variable: a row the platform inserts
//! reaches fakesmsc behind a real Kannel, and the logs keep its secrets.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::kannel::{self, Kannel};
use crate::support::*;

/// The daemon, killed (and its working dir removed) when the test ends however it ends.
struct Daemon {
    child: Child,
    dir: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn the_daemon_configured_from_the_readme_sends_through_kannel() {
    let gateway = Kannel::start().await;
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!(
        "smsrelay-kannel-daemon-{:016x}",
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("smsrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"[database]
url = "{db}"

[dispatch]
instance_id = "kannel-daemon-test"
poll_interval = "100ms"

[validation]
default_region = "KE"

[api]
enabled = false

[provider]
kind = "kannel"

[provider.kannel]
url = "{url}"
username = "{user}"
from = "BANK"
"#,
            db = db.url,
            url = gateway.sendsms_url,
            user = kannel::USERNAME,
        ),
    )
    .unwrap();
    let log = dir.join("smsrelay.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_smsrelay"));
    for (key, _) in std::env::vars() {
        if key.starts_with("SMSRELAY_") {
            command.env_remove(key);
        }
    }
    let out = std::fs::File::create(&log).unwrap();
    let child = command
        .current_dir(&dir)
        .args(["--config", config.to_str().unwrap(), "run"])
        .env("SMSRELAY_PROVIDER__KANNEL__PASSWORD", kannel::PASSWORD)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start smsrelay");
    let daemon = Daemon {
        child,
        dir: dir.clone(),
        log,
    };

    let text = "Mkopo wako umeidhinishwa. Спасибо!";
    let id = db.insert(7, "0712 345 678", text).await;
    let received = gateway.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        received.len(),
        1,
        "fakesmsc got it\n--- smsrelay\n{}\n{}",
        daemon.log(),
        gateway.logs()
    );
    assert_eq!(received[0].to, "+254712345678");
    assert_eq!(received[0].from, "BANK");
    assert_eq!(received[0].text(), text);
    let sent = eventually(Duration::from_secs(10), || async {
        db.status(id).await == "sent"
    })
    .await;
    assert!(sent, "row {id} is sent\n{}", daemon.log());

    let logs = daemon.log();
    for secret in [kannel::PASSWORD, "712345678", "Mkopo"] {
        assert!(
            !logs.contains(secret),
            "{secret:?} leaked into the log:\n{logs}"
        );
    }
}
