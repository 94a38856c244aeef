//! The real `smsrelay` binary: configuration errors, start-up against an
//! absent database, SIGTERM, and what its logs may never contain.

#[path = "../support/mod.rs"]
mod support;

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use support::*;

/// A fresh empty working directory (the daemon keeps its dev token file there).
fn workdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("smsrelay-work-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn smsrelay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smsrelay"));
    command.current_dir(workdir());
    // Start from a clean slate whatever the developer's shell exports.
    for (key, _) in std::env::vars() {
        if key.starts_with("SMSRELAY_") {
            command.env_remove(key);
        }
    }
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run smsrelay")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn write_config(contents: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("smsrelay-test-{:016x}.toml", rand::random::<u64>()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_redacted() {
    let file = write_config(
        "[database]\nurl = \"postgres://smsrelay:hunter2@db.example/platform\"\n[dispatch]\nbatch_size = 32\n",
    );
    for args in [
        vec!["--config", file.to_str().unwrap(), "check-config"],
        vec!["check-config", "--config", file.to_str().unwrap()],
    ] {
        let output = run(smsrelay()
            .args(&args)
            .env("SMSRELAY_DISPATCH__LEASE", "90s"));
        assert!(output.status.success(), "{}", stderr(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("batch_size = 32"), "{stdout}");
        assert!(
            stdout.contains("lease = \"1m 30s\""),
            "environment overrides the file: {stdout}"
        );
        assert!(stdout.contains("url = \"[redacted]\""), "{stdout}");
        assert!(!stdout.contains("hunter2"), "{stdout}");
    }
}

#[test]
fn the_reference_config_file_is_valid_and_complete() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/config/smsrelay.toml");
    let output = run(smsrelay()
        .args(["check-config", "--config", reference])
        .env("SMSRELAY_DATABASE__URL", "postgres://127.0.0.1/platform"));
    assert!(output.status.success(), "{}", stderr(&output));
    // Every key the daemon prints is documented in the reference file.
    let effective = String::from_utf8_lossy(&output.stdout).into_owned();
    let documented = std::fs::read_to_string(reference).unwrap();
    for line in effective.lines().filter(|l| l.contains(" = ")) {
        let key = line.split(" = ").next().unwrap().trim();
        let documented =
            documented.contains(&format!("{key} =")) || documented.contains(&format!(".{key}]]"));
        assert!(documented, "{key} is documented in config/smsrelay.toml");
    }
}

#[test]
fn bad_configuration_names_the_key_and_exits_2() {
    // (environment, extra config file lines, the key the error must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 12] = [
        (
            &[("SMSRELAY_DISPATCH__BATCH_SIZE", "lots")],
            "",
            "batch_size",
        ),
        (&[("SMSRELAY_DISPATCH__LEASE", "soon")], "", "lease"),
        (&[], "[dispatch]\nbatchsize = 5\n", "batchsize"),
        (
            &[("SMSRELAY_VALIDATION__DEFAULT_REGION", "XX")],
            "",
            "validation.default_region",
        ),
        (
            &[("SMSRELAY_HOUSEKEEPING__REAPER", "every minute")],
            "",
            "housekeeping.reaper",
        ),
        (
            &[("SMSRELAY_HOUSEKEEPING__RETENTION", "5m")],
            "",
            "housekeeping.retention",
        ),
        (
            &[("SMSRELAY_HOUSEKEEPING__RETENTION_SCHEDULE", "nightly")],
            "",
            "housekeeping.retention_schedule",
        ),
        (
            &[("SMSRELAY_DATABASE__READ_URL", "mysql://replica/x")],
            "",
            "database.read_url",
        ),
        (
            &[("SMSRELAY_API__STATEMENT_TIMEOUT", "0s")],
            "",
            "api.statement_timeout",
        ),
        (
            &[("SMSRELAY_API__MAX_OFFSET", "9223372036854775808")],
            "",
            "api.max_offset",
        ),
        (&[("SMSRELAY_API__POOL_SIZE", "0")], "", "api.pool_size"),
        // A database call as long as the lease: a renewal could not land in time.
        (
            &[("SMSRELAY_DATABASE__CALL_TIMEOUT", "30s")],
            "",
            "must exceed 1.5 x database.call_timeout",
        ),
    ];
    for (env, file, key) in cases {
        let path = write_config(&format!(
            "[database]\nurl = \"postgres://127.0.0.1/x\"\n{file}"
        ));
        let output = run(smsrelay()
            .args(["--config", path.to_str().unwrap(), "check-config"])
            .envs(env.iter().copied()));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{env:?} {file:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(key),
            "error names {key}: {}",
            stderr(&output)
        );
    }
    let output = run(smsrelay().args(["--config", "/nonexistent/smsrelay.toml", "run"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("/nonexistent/smsrelay.toml does not exist"),
        "{}",
        stderr(&output)
    );
    let output = run(smsrelay()
        .args(["check-config"])
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_DATABASE__URL", "postgres://x/y"));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("provider.webhook.url"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn environment_variables_that_are_not_settings() {
    // A script's own variable, without the section separator, is not a setting.
    let dir = workdir();
    let mut child = smsrelay()
        .current_dir(&dir)
        .arg("run")
        .env("SMSRELAY_BIN", "/usr/local/bin/smsrelay")
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smsrelay");
    // Running until told to stop: SMSRELAY_BIN did not end it.
    let ready = dir.join("smsrelay.db");
    let started = std::time::Instant::now();
    while !ready.exists() && child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no database created"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "smsrelay exited");
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("smsrelay ready"), "{logs}");

    // One with the separator that names no setting is refused, naming the variable.
    let output = run(smsrelay()
        .arg("check-config")
        .env("SMSRELAY_DATABASE__POOL_SIZ", "3"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("environment variable SMSRELAY_DATABASE__POOL_SIZ: no such setting"),
        "{}",
        stderr(&output)
    );
    // A bad value names the variable and the key.
    let output = run(smsrelay()
        .arg("check-config")
        .env("SMSRELAY_DATABASE__POOL_SIZE", "many"));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("environment variable SMSRELAY_DATABASE__POOL_SIZE: invalid type")
            && stderr(&output).contains("`database.pool_size`"),
        "{}",
        stderr(&output)
    );
}

/// Starts `smsrelay run` against `db` and `provider_url`, logging everything as JSON.
fn start_daemon(db: &TestDb, provider_url: &str) -> Child {
    smsrelay()
        .arg("run")
        .env("SMSRELAY_DATABASE__URL", &db.url)
        .env("SMSRELAY_DATABASE__CONNECT_TIMEOUT", "1s")
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider_url)
        .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE")
        .env("SMSRELAY_DISPATCH__POLL_INTERVAL", "50ms")
        .env("SMSRELAY_DISPATCH__BACKOFF_INITIAL", "10ms")
        .env("SMSRELAY_DISPATCH__BACKOFF_MAX", "20ms")
        .env("SMSRELAY_LOG__LEVEL", "trace")
        .env("SMSRELAY_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smsrelay")
}

/// Sends SIGTERM and returns the exit status and everything logged.
fn terminate(mut child: Child) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    (child.wait().unwrap(), logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_a_phone_number_or_a_message_body() {
    let db = TestDb::new().await;
    let provider = wiremock::MockServer::start().await;
    // One accepted, one refused, one retried then accepted: every log path runs.
    wiremock::Mock::given(wiremock::matchers::body_string_contains("refuse me"))
        .respond_with(wiremock::ResponseTemplate::new(400))
        .mount(&provider)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&provider)
        .await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(AcceptWithId)
        .mount(&provider)
        .await;
    let child = start_daemon(&db, &provider.uri());

    let sent = db
        .insert(
            1,
            "0798 765 432",
            "Wanjiku, your balance is KES 1,234,567.89",
        )
        .await;
    let refused = db.insert(2, "+254 733 111 222", "refuse me, Otieno").await;
    let invalid = db
        .insert(3, "+1 555 0100 99999999", "Akinyi's PIN reminder")
        .await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            db.status(sent).await == "sent"
                && db.status(refused).await == "declined"
                && db.status(invalid).await == "declined"
        })
        .await
    );
    let (status, logs) = terminate(child);
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM ends the daemon cleanly:\n{logs}"
    );
    assert!(
        logs.contains("smsrelay ready") && logs.contains("smsrelay stopped"),
        "{logs}"
    );
    assert!(
        logs.contains("+2547******22"),
        "numbers appear masked: {logs}"
    );
    for secret in [
        "798765432",
        "0798 765 432",
        "+254798765432",
        "733111222",
        "733 111 222",
        "0100 9999",
        "5550100",
        "Wanjiku",
        "1,234,567.89",
        "Otieno",
        "Akinyi",
    ] {
        assert!(!logs.contains(secret), "log output contains {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_database_is_down_and_sends_once_it_is_back() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let id = db.insert(1, "+254712345678", "hello").await;
    db.cut().await;
    let mut child = start_daemon(&db, &provider.uri());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon keeps waiting for the database"
    );
    db.restore().await;
    let sent = eventually(Duration::from_secs(60), || async {
        db.status(id).await == "sent"
    })
    .await;
    let (status, logs) = terminate(child);
    assert!(sent, "{logs}");
    assert_eq!(status.code(), Some(0));
    assert!(logs.contains("database not reachable; retrying"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_watchdog_and_stopping() {
    let db = TestDb::new().await;
    let provider = accepting_provider().await;
    let socket_path = std::env::temp_dir().join(format!(
        "smsrelay-notify-{:016x}.sock",
        rand::random::<u64>()
    ));
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut command = smsrelay();
    command
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("SMSRELAY_DATABASE__URL", &db.url)
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider.uri())
        .stderr(Stdio::piped());
    let child = command.spawn().unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 256];
    while !(received.iter().any(|m: &String| m.contains("READY=1"))
        && received.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        let n = socket.recv(&mut buffer).expect("a notification within 20s");
        received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(0), "{logs}");
    // Watchdog pings queued before the stop come first.
    while !received.iter().any(|m| m.contains("STOPPING=1")) {
        let n = socket
            .recv(&mut buffer)
            .unwrap_or_else(|e| panic!("STOPPING=1 at shutdown ({e}): {received:?}"));
        received.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
    }
    let _ = std::fs::remove_file(&socket_path);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_configured_tokens_a_private_dev_token_is_created_once() {
    use std::os::unix::fs::PermissionsExt;
    let db = TestDb::new().await;
    sqlx::raw_sql("CREATE TABLE m_client (id bigint PRIMARY KEY, mobile_no text); INSERT INTO m_client VALUES (1, '+254712345678');")
        .execute(&db.pool)
        .await
        .unwrap();
    let dir = workdir();
    let port = free_port();
    let start = || {
        smsrelay()
            .current_dir(&dir)
            .arg("run")
            .env("SMSRELAY_DATABASE__URL", &db.url)
            .env("SMSRELAY_API__LISTEN", format!("127.0.0.1:{port}"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let http = reqwest::Client::new();
    let post = |token: String| {
        let http = http.clone();
        async move {
            http.post(format!("http://127.0.0.1:{port}/sms"))
                .bearer_auth(token)
                .json(&serde_json::json!({"message": "hello", "clientId": 1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let child = start();
    let file = dir.join("smsrelay-api-token");
    assert!(eventually(Duration::from_secs(20), || async { file.exists() }).await);
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            post(token.clone()).await == 201
        })
        .await
    );
    assert_eq!(post("smsr_guess".into()).await, 401);
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(0));
    assert!(logs.contains("development token"), "{logs}");
    assert!(!logs.contains(&token), "the token is never logged");

    // A restart keeps the same token.
    let child = start();
    assert!(
        eventually(Duration::from_secs(20), || async {
            post(token.clone()).await == 201
        })
        .await
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    terminate(child);
}

#[test]
fn the_demo_shows_a_message_going_from_post_to_sent_on_sqlite() {
    use std::io::BufRead;
    let dir = workdir();
    let mut child = smsrelay()
        .current_dir(&dir)
        .arg("demo")
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("The daemon keeps running"))
    {
        match lines_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the demo did not finish: {seen:#?}"),
        }
    }
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(0), "{logs}");
    let statuses: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("status: "))
        .collect();
    assert_eq!(statuses, ["pending", "sent"], "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("\"mobileNo\": \"+254 700 000 001\""))
    );
    assert!(
        dir.join("smsrelay.db").exists(),
        "the default SQLite file in the working directory"
    );
}

/// Binds a notify socket like systemd's, for the daemon to report to.
fn notify_socket() -> (std::path::PathBuf, std::os::unix::net::UnixDatagram) {
    let path = std::env::temp_dir().join(format!(
        "smsrelay-notify-{:016x}.sock",
        rand::random::<u64>()
    ));
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    (path, socket)
}

/// Collects every notification with the time it arrived, until `done` is set.
fn record_notifications(
    socket: std::os::unix::net::UnixDatagram,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<(std::time::Instant, String)>> {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut buffer = [0u8; 256];
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok(n) = socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                received.push((std::time::Instant::now(), message));
            }
        }
        received
    })
}

/// The longest silence between WATCHDOG=1 pings from READY=1 on.
fn longest_watchdog_gap(received: &[(std::time::Instant, String)]) -> Duration {
    let ready = received
        .iter()
        .position(|(_, m)| m.contains("READY=1"))
        .expect("READY=1");
    let pings: Vec<std::time::Instant> = received[ready..]
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(at, _)| *at)
        .collect();
    assert!(pings.len() > 2, "watchdog pings after READY: {received:?}");
    std::iter::once(received[ready].0)
        .chain(pings.iter().copied())
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Accepts like [`AcceptWithId`], after `0`.
struct AcceptWithIdAfter(Duration);

impl wiremock::Respond for AcceptWithIdAfter {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        AcceptWithId.respond(request).set_delay(self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_through_a_database_outage_and_nothing_is_lost() {
    // systemd's WatchdogSec=30s with a 90s outage, scaled down ten times.
    let watchdog = Duration::from_secs(3);
    let outage = Duration::from_secs(9);
    let db = TestDb::new().await;
    // Answers slowly, so the outage begins while sends are in flight and
    // their outcomes must be recorded through it.
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(AcceptWithIdAfter(Duration::from_secs(1)))
        .mount(&provider)
        .await;
    let (socket_path, socket) = notify_socket();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notifications = record_notifications(socket, done.clone());
    let mut first = Vec::new();
    for n in 0..5 {
        first.push(db.insert(1, "+254712345678", &format!("before {n}")).await);
    }
    let child = smsrelay()
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env("SMSRELAY_DATABASE__URL", &db.url)
        .env("SMSRELAY_DATABASE__CONNECT_TIMEOUT", "1s")
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider.uri())
        .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE")
        .env("SMSRELAY_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smsrelay");
    // The outage begins while the first batch is at the provider.
    assert!(
        eventually(Duration::from_secs(30), || async {
            !provider
                .received_requests()
                .await
                .unwrap_or_default()
                .is_empty()
        })
        .await,
        "the first batch reached the provider"
    );
    db.cut().await;
    tokio::time::sleep(outage).await;
    db.restore().await;
    let mut after = Vec::new();
    for n in 0..5 {
        after.push(db.insert(1, "+254712345678", &format!("after {n}")).await);
    }
    let all: Vec<i64> = first.iter().chain(&after).copied().collect();
    let delivered = eventually(Duration::from_secs(60), || async {
        for id in &all {
            if db.status(*id).await != "sent" {
                return false;
            }
        }
        true
    })
    .await;
    let (status, logs) = terminate(child);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let received = notifications.join().unwrap();
    let _ = std::fs::remove_file(&socket_path);
    assert!(
        delivered,
        "every message sent once the database is back:\n{logs}"
    );
    assert_eq!(status.code(), Some(0), "{logs}");
    let gap = longest_watchdog_gap(&received);
    assert!(
        gap <= watchdog / 2,
        "a WATCHDOG=1 at least every {:?} through the outage; longest silence {gap:?}",
        watchdog / 2
    );
    let mut ids = received_ids(&provider).await;
    ids.sort_unstable();
    assert_eq!(ids, all, "each message reached the provider exactly once");
}

/// Answers 401 until the flag is set, then accepts.
struct UnauthorizedUntil(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl wiremock::Respond for UnauthorizedUntil {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            AcceptWithId.respond(request)
        } else {
            wiremock::ResponseTemplate::new(401)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_pauses_the_provider_with_one_log_line_and_declines_nothing() {
    let db = TestDb::new().await;
    let provider = wiremock::MockServer::start().await;
    let fixed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(UnauthorizedUntil(fixed.clone()))
        .mount(&provider)
        .await;
    let child = start_daemon(&db, &provider.uri());
    let mut ids = Vec::new();
    for client in 0..5 {
        ids.push(db.insert(client, "+254712345678", "hello").await);
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            !provider.received_requests().await.unwrap().is_empty()
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(30), || async {
            for &id in &ids {
                if db.status(id).await != "sent" {
                    return false;
                }
            }
            true
        })
        .await
    );
    let (status, logs) = terminate(child);
    assert_eq!(status.code(), Some(0), "{logs}");
    let paused: Vec<&str> = logs
        .lines()
        // The pause's own warning (the release line also names the reason).
        .filter(|l| l.contains("\"message\":\"provider paused"))
        .collect();
    assert_eq!(paused.len(), 1, "one line per pause: {paused:?}");
    assert!(
        paused[0].contains("\"provider\":\"webhook\"")
            && paused[0].contains("configuration problem"),
        "{}",
        paused[0]
    );
    assert!(logs.contains("provider answering again"), "{logs}");
}

/// Hangs on the first request (the instance that sent it will be killed),
/// accepts every later one at once.
struct HangFirst(std::sync::atomic::AtomicUsize);

impl wiremock::Respond for HangFirst {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let answer = AcceptWithId.respond(request);
        if n == 0 {
            answer.set_delay(Duration::from_secs(120))
        } else {
            answer
        }
    }
}

/// `smsrelay run` with the default lease and reaper schedule, logging at info.
fn start_quiet_daemon(db: &TestDb, provider_url: &str) -> Child {
    smsrelay()
        .arg("run")
        .env("SMSRELAY_DATABASE__URL", &db.url)
        .env("SMSRELAY_DATABASE__CONNECT_TIMEOUT", "1s")
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider_url)
        .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE")
        .env("SMSRELAY_DISPATCH__POLL_INTERVAL", "50ms")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smsrelay")
}

/// Crash recovery with the default settings: one instance is SIGKILLed while
/// its send hangs at the provider; the other sends the message again within
/// one lease plus one reaper interval. Prints the measured time (README, Guarantees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_another_instance_sends_again_within_lease_and_reaper_interval() {
    let db = TestDb::new().await;
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(HangFirst(std::sync::atomic::AtomicUsize::new(0)))
        .mount(&provider)
        .await;
    let id = db.insert(1, "+254712345678", "crash test").await;
    let mut crashed = start_quiet_daemon(&db, &provider.uri());
    let requests = || async { provider.received_requests().await.unwrap_or_default().len() };
    assert!(
        eventually(Duration::from_secs(30), || async { requests().await == 1 }).await,
        "the first instance sends"
    );
    let survivor = start_quiet_daemon(&db, &provider.uri());
    tokio::time::sleep(Duration::from_secs(1)).await;
    crashed.kill().expect("SIGKILL");
    let killed_at = std::time::Instant::now();
    crashed.wait().unwrap();
    let defaults = smsrelay::settings::Config::default();
    let bound = defaults.dispatch.lease + Duration::from_secs(5 + 5);
    let resent = eventually(bound + Duration::from_secs(10), || async {
        requests().await >= 2
    })
    .await;
    let recovery = killed_at.elapsed();
    assert!(resent, "the survivor sends the message again");
    assert!(
        eventually(Duration::from_secs(10), || async {
            db.status(id).await == "sent"
        })
        .await,
        "and records it"
    );
    let (status, _) = terminate(survivor);
    assert_eq!(status.code(), Some(0));
    eprintln!("SIGKILL to the message sent again by the other instance: {recovery:?}");
    assert!(
        recovery < bound,
        "recovered in {recovery:?}, expected under lease + reaper interval + 5s = {bound:?}"
    );
    assert_eq!(requests().await, 2, "sent once more, not more");
}

/// A SIGKILL mid-burn-down: of what the provider received, at most the sends
/// in flight at that moment plus one outcome group is not recorded (and so
/// may be sent again). The kill comes 70-odd messages into the second claim
/// of 100, where a dispatcher that records a whole claim at once would leave
/// all of those unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_burn_down_leaves_at_most_the_sends_in_flight_and_one_group_unrecorded() {
    const CONCURRENCY: usize = 4;
    // The group being written plus what finished meanwhile: at 4 sends per
    // 20 ms, one or two per millisecond-long write, about 30 when a loaded
    // machine makes a write take 150 ms.
    const GROUP: usize = 32;
    let db = TestDb::new().await;
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(AcceptAfter20ms)
        .mount(&provider)
        .await;
    sqlx::query(
        "INSERT INTO sms (client_id, mobile_no, message)
         SELECT g, '+2547' || lpad(g::text, 8, '0'), 'message ' || g FROM generate_series(1, 1000) g",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut daemon = smsrelay()
        .arg("run")
        .env("SMSRELAY_DATABASE__URL", &db.url)
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider.uri())
        .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE")
        .env("SMSRELAY_DISPATCH__CONCURRENCY", CONCURRENCY.to_string())
        .env("SMSRELAY_DISPATCH__BATCH_SIZE", "100")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start smsrelay");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while provider.received_requests().await.unwrap_or_default().len() < 170 {
        assert!(std::time::Instant::now() < deadline, "the daemon sends");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    daemon.kill().expect("SIGKILL");
    daemon.wait().unwrap();

    let received: std::collections::HashSet<i64> =
        received_ids(&provider).await.into_iter().collect();
    let sent: Vec<i64> = sqlx::query_scalar("SELECT id FROM sms WHERE status = 'sent'")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let unrecorded = received.len() - sent.iter().filter(|id| received.contains(id)).count();
    eprintln!(
        "SIGKILL after {} sends: {} recorded, {unrecorded} received but not recorded",
        received.len(),
        sent.len()
    );
    assert_eq!(
        sent.len(),
        received.len() - unrecorded,
        "nothing recorded unsent"
    );
    assert!(
        unrecorded <= CONCURRENCY + GROUP,
        "{unrecorded} sent but unrecorded: more than {CONCURRENCY} in flight + a group of {GROUP}"
    );
}

/// Accepts like [`AcceptWithId`] after 20 ms: a steady set of sends in flight.
struct AcceptAfter20ms;

impl wiremock::Respond for AcceptAfter20ms {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        AcceptWithId
            .respond(request)
            .set_delay(Duration::from_millis(20))
    }
}

/// The `# [provider.<name>]` block of the reference config: up to the next section.
fn reference_block(name: &str) -> String {
    let reference =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/smsrelay.toml"))
            .unwrap();
    let header = format!("[provider.{name}]");
    let start = reference
        .find(&header)
        .unwrap_or_else(|| panic!("{header} is in config/smsrelay.toml"));
    let rest = &reference[start + header.len()..];
    let end = rest
        .find("\n[")
        .into_iter()
        .chain(rest.find("\n# ["))
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_owned()
}

#[test]
fn every_key_of_every_provider_section_is_documented_in_its_block() {
    let secret = "0123456789abcdef-secret";
    let sections = [
        (
            "webhook",
            format!(
                "url = \"http://127.0.0.1:9/sms\"\ntoken = \"{secret}\"\ntoken_credential = \"t\"\nmethod = \"PUT\"\ncontent_type = \"application/json\"\nbody = '{{\"to\": \"{{{{to}}}}\"}}'\n"
            ),
        ),
        (
            "kannel",
            format!(
                "url = \"http://127.0.0.1:13013/cgi-bin/sendsms\"\nusername = \"u\"\npassword = \"{secret}\"\npassword_credential = \"p\"\nfrom = \"BANK\"\ndlr_url_base = \"https://sms.example.com\"\ncallback_secret = \"{secret}\"\ncallback_secret_credential = \"c\"\n"
            ),
        ),
        (
            "twilio",
            format!(
                "account_sid = \"AC0123456789abcdef0123456789abcdef\"\nauth_token = \"{secret}\"\nauth_token_credential = \"a\"\nfrom = \"+15005550006\"\nbase_url = \"https://api.twilio.com\"\nstatus_callback_url = \"https://sms.example.com/callbacks/twilio\"\n"
            ),
        ),
        (
            "infobip",
            format!(
                "base_url = \"https://xyz.api.infobip.com\"\napi_key = \"{secret}\"\napi_key_credential = \"k\"\nfrom = \"BANK\"\nnotify_url = \"https://sms.example.com\"\ncallback_secret = \"{secret}\"\ncallback_secret_credential = \"c\"\n"
            ),
        ),
        (
            "africastalking",
            format!(
                "username = \"bank\"\napi_key = \"{secret}\"\napi_key_credential = \"k\"\nfrom = \"BANK\"\nbase_url = \"https://api.sandbox.africastalking.com\"\ncallback_secret = \"{secret}\"\ncallback_secret_credential = \"c\"\n"
            ),
        ),
    ];
    for (name, section) in sections {
        let file = write_config(&format!(
            "[database]\nurl = \"postgres://127.0.0.1/platform\"\n[provider]\nkind = \"{name}\"\n[provider.{name}]\n{section}"
        ));
        let output = run(smsrelay().args(["check-config", "--config", file.to_str().unwrap()]));
        assert!(output.status.success(), "{name}: {}", stderr(&output));
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            !stdout.contains(secret),
            "{name}: a secret was printed: {stdout}"
        );
        let printed = stdout
            .split(&format!("[provider.{name}]\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: its section is printed: {stdout}"));
        let block = reference_block(name);
        let mut keys = 0;
        for line in printed.lines().take_while(|l| !l.starts_with('[')) {
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            keys += 1;
            assert!(
                block.contains(&format!("# {key} =")) || block.contains(&format!("\n{key} =")),
                "provider.{name}.{key} is documented in its block of config/smsrelay.toml"
            );
        }
        assert_eq!(
            keys,
            section.lines().count(),
            "{name}: every key set is printed: {printed}"
        );
    }
}

#[test]
fn opt_out_remove_clears_a_number_on_sqlite_and_masks_it() {
    let dir = workdir();
    let url = format!("sqlite://{}", dir.join("smsrelay.db").display());
    let migrate = run(smsrelay()
        .args(["migrate"])
        .env("SMSRELAY_DATABASE__URL", &url));
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    // SHA-256 of "+254712345678", as the dispatcher records it.
    let key = "7e68ed1fbff891757a23ef26f54dd9de094c47613a21f736deb30c14b70e8127";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pool = runtime.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO sms_opt_out (number_sha256, provider, sms_id) VALUES (?1, 'twilio', 1)",
        )
        .bind(key)
        .execute(&pool)
        .await
        .unwrap();
        pool
    });
    let count = || {
        runtime.block_on(async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sms_opt_out")
                .fetch_one(&pool)
                .await
                .unwrap()
        })
    };
    let remove = || {
        run(smsrelay()
            .args(["opt-out", "remove", "0712 345 678"])
            .env("SMSRELAY_DATABASE__URL", &url)
            .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE"))
    };
    let first = remove();
    assert!(first.status.success(), "{}", stderr(&first));
    let stdout = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(stdout.contains("removed"), "{stdout}");
    assert!(
        !stdout.contains("712345678") && !stdout.contains("712 345 678"),
        "masked: {stdout}"
    );
    assert_eq!(count(), 0);
    let again = remove();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("was not opted out"));
    let bad = run(smsrelay()
        .args(["opt-out", "remove", "not a number"])
        .env("SMSRELAY_DATABASE__URL", &url));
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("number"), "{}", stderr(&bad));
}

/// PostgreSQL backends stopped with SIGSTOP: they neither answer nor reset
/// their connections, as behind a network partition. Continued on drop, so a
/// frozen backend never outlives the test, whatever happens in it.
struct FrozenBackends(Vec<i32>);

impl FrozenBackends {
    /// The backends of `db` whose connection says `application_name`;
    /// with `waiting`, only those waiting for a lock (mid-statement).
    async fn find(db: &TestDb, application_name: &str, waiting: bool) -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2
             AND (NOT $3 OR wait_event_type = 'Lock')",
        )
        .bind(&db.name)
        .bind(application_name)
        .bind(waiting)
        .fetch_all(&db.pool)
        .await
        .expect("pg_stat_activity")
    }

    /// Stops the backends `pids`.
    fn freeze(pids: Vec<i32>) -> FrozenBackends {
        let frozen = FrozenBackends(pids);
        for pid in &frozen.0 {
            let stopped = Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .expect("kill -STOP");
            assert!(stopped.success(), "kill -STOP {pid}");
        }
        frozen
    }
}

impl Drop for FrozenBackends {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// Item 8: the backends serving the daemon stop answering, first while idle
/// in its pool, then in the middle of an outcome write. The daemon logs it,
/// goes on with fresh connections (a call on a stopped backend times out
/// after database.call_timeout and its connection is closed), feeds the
/// watchdog throughout, records each outcome once, and sends everything after
/// the backends are continued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_backend_is_timed_out_and_nothing_is_recorded_twice() {
    let watchdog = Duration::from_secs(3);
    let longest_freeze = Duration::from_secs(30);
    let application_name = "smsrelay-frozen-test";
    let db = TestDb::new().await;
    // Answers after a second, so the freeze begins while sends are in flight
    // and their outcomes are recorded through it.
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(AcceptWithIdAfter(Duration::from_secs(1)))
        .mount(&provider)
        .await;
    let (socket_path, socket) = notify_socket();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let notifications = record_notifications(socket, done.clone());
    let mut first = Vec::new();
    for n in 0..5 {
        first.push(db.insert(1, "+254712345678", &format!("before {n}")).await);
    }
    let child = smsrelay()
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", watchdog.as_micros().to_string())
        .env(
            "SMSRELAY_DATABASE__URL",
            format!("{}?application_name={application_name}", db.url),
        )
        .env("SMSRELAY_DATABASE__CONNECT_TIMEOUT", "1s")
        .env("SMSRELAY_DATABASE__CALL_TIMEOUT", "2s")
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .env("SMSRELAY_PROVIDER__KIND", "webhook")
        .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider.uri())
        .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE")
        .env("SMSRELAY_DISPATCH__POLL_INTERVAL", "50ms")
        .env("SMSRELAY_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smsrelay");
    assert!(
        eventually(Duration::from_secs(30), || async {
            !provider
                .received_requests()
                .await
                .unwrap_or_default()
                .is_empty()
        })
        .await,
        "the first batch reached the provider"
    );
    let recorded_while_frozen = {
        let frozen =
            FrozenBackends::freeze(FrozenBackends::find(&db, application_name, false).await);
        assert!(!frozen.0.is_empty(), "the daemon's backends were found");
        // The outcomes are written on fresh connections while the old ones
        // are still stopped: nothing waits for TCP to give up.
        eventually(longest_freeze, || async {
            for id in &first {
                if db.status(*id).await != "sent" {
                    return false;
                }
            }
            true
        })
        .await
    };
    // Now mid-statement: the outcome write of the second batch waits for a
    // row lock the test holds; its backend is stopped there, and the lock
    // released, so that the stopped backend is granted it.
    let mut after = Vec::new();
    for n in 0..5 {
        after.push(db.insert(1, "+254712345678", &format!("after {n}")).await);
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            received_ids(&provider).await.contains(&after[0])
        })
        .await,
        "the second batch reached the provider"
    );
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM sms WHERE id = $1 FOR UPDATE")
        .bind(after[0])
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let waiting = loop {
        let waiting = FrozenBackends::find(&db, application_name, true).await;
        if !waiting.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !waiting.is_empty(),
        "the outcome write waits for the row lock"
    );
    {
        let _frozen = FrozenBackends::freeze(waiting);
        lock.commit().await.unwrap();
        // Several call timeouts while the write stays stopped.
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    let all: Vec<i64> = first.iter().chain(&after).copied().collect();
    let delivered = eventually(Duration::from_secs(60), || async {
        for id in &all {
            if db.status(*id).await != "sent" {
                return false;
            }
        }
        true
    })
    .await;
    let (status, logs) = terminate(child);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let received = notifications.join().unwrap();
    let _ = std::fs::remove_file(&socket_path);
    assert!(
        recorded_while_frozen,
        "the first batch recorded while its backends were stopped:\n{logs}"
    );
    assert!(
        delivered,
        "every message sent once the backends continue:\n{logs}"
    );
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("database.call_timeout"),
        "the timed-out calls are logged, naming the setting:\n{logs}"
    );
    let gap = longest_watchdog_gap(&received);
    assert!(
        gap <= watchdog / 2,
        "a WATCHDOG=1 at least every {:?} through the freeze; longest silence {gap:?}",
        watchdog / 2
    );
    let mut ids = received_ids(&provider).await;
    ids.sort_unstable();
    assert_eq!(ids, all, "each message reached the provider exactly once");
    let attempts: Vec<(i64, i64)> =
        sqlx::query_as("SELECT sms_id, count(*) FROM sms_attempt GROUP BY sms_id ORDER BY sms_id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        attempts,
        all.iter().map(|id| (*id, 1)).collect::<Vec<_>>(),
        "one attempt row per message"
    );
}
