//! The real binary on SQLite: the zero-setup default, and several processes
//! sharing one database file.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use smsrelay::store::sqlite::SqliteStore;
use smsrelay::store::{Messages, Schema};

use crate::backends::{Backend, TestStore, options};
use crate::support::{AcceptWithId, eventually, received_ids};

fn smsrelay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_smsrelay"));
    // Start from a clean slate whatever the developer's shell exports.
    for (key, _) in std::env::vars() {
        if key.starts_with("SMSRELAY_") {
            command.env_remove(key);
        }
    }
    // Several daemons run at once here: each API takes a free port, and each
    // daemon works in its own directory (it may keep a dev token file there).
    let dir = std::env::temp_dir().join(format!("smsrelay-work-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("working directory");
    command
        .env("SMSRELAY_API__LISTEN", "127.0.0.1:0")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Sends SIGTERM and returns the exit code and everything logged.
fn terminate(mut child: Child) -> (Option<i32>, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut logs = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut logs)
        .expect("logs");
    (child.wait().expect("exit").code(), logs)
}

/// A store of our own on the daemon's file, once the daemon has migrated it.
async fn migrated_store(path: &Path) -> SqliteStore {
    let store = SqliteStore::open(&options(&format!("sqlite://{}", path.display()))).unwrap();
    let ready = eventually(Duration::from_secs(30), || async {
        path.exists() && store.ready().await.unwrap_or(false)
    })
    .await;
    assert!(ready, "the daemon created and migrated {}", path.display());
    store
}

/// With no config file and no environment, `smsrelay run` uses
/// `sqlite://smsrelay.db` in the working directory and the `log` provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_configuration_the_daemon_runs_on_sqlite_in_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("smsrelay-default-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = smsrelay()
        .arg("run")
        .current_dir(&dir)
        .spawn()
        .expect("start smsrelay");
    let store = migrated_store(&dir.join("smsrelay.db")).await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO sms (client_id, mobile_no, message) VALUES (1, '+254 712 345 678', 'Karibu, Wanjiku') RETURNING id",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let sent = eventually(Duration::from_secs(30), || async {
        store
            .get(id)
            .await
            .unwrap()
            .is_some_and(|s| s.status.as_str() == "sent")
    })
    .await;
    let (code, logs) = terminate(child);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(sent, "the INSERTed row reached `sent`:\n{logs}");
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("smsrelay ready"), "{logs}");
    for secret in ["712345678", "712 345 678", "Wanjiku"] {
        assert!(!logs.contains(secret), "the log shows {secret:?}:\n{logs}");
    }
}

/// A URL with a scheme smsrelay does not speak is a configuration error (exit 2).
#[test]
fn an_unknown_database_scheme_is_a_configuration_error() {
    let output = smsrelay()
        .arg("check-config")
        .env("SMSRELAY_DATABASE__URL", "mssql://sa@db.example/platform")
        .output()
        .expect("run smsrelay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("database.url") && stderr.contains("mysql://, mariadb:// or sqlite://"),
        "{stderr}"
    );
}

/// Replies like AcceptWithId after a short pause, so batches of two
/// processes overlap in time.
struct SlowAccept;

impl wiremock::Respond for SlowAccept {
    fn respond(&self, request: &wiremock::Request) -> wiremock::ResponseTemplate {
        AcceptWithId
            .respond(request)
            .set_delay(Duration::from_millis(5))
    }
}

/// Two `smsrelay run` processes on one SQLite file share the work and send
/// every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_send_each_message_once() {
    let Some(db) = TestStore::unmigrated(Backend::Sqlite).await else {
        return;
    };
    let provider = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(SlowAccept)
        .mount(&provider)
        .await;
    let start = |instance: &str| {
        smsrelay()
            .arg("run")
            .env("SMSRELAY_DATABASE__URL", &db.url)
            .env("SMSRELAY_PROVIDER__KIND", "webhook")
            .env("SMSRELAY_PROVIDER__WEBHOOK__URL", provider.uri())
            .env("SMSRELAY_VALIDATION__DEFAULT_REGION", "KE")
            .env("SMSRELAY_DISPATCH__INSTANCE_ID", instance)
            .env("SMSRELAY_DISPATCH__BATCH_SIZE", "10")
            .env("SMSRELAY_DISPATCH__CONCURRENCY", "4")
            .env("SMSRELAY_DISPATCH__POLL_INTERVAL", "50ms")
            .spawn()
            .expect("start smsrelay")
    };
    let a = start("node-a");
    let b = start("node-b");
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let store = migrated_store(Path::new(&path)).await;
    // Both are polling by now (start-up takes milliseconds).
    tokio::time::sleep(Duration::from_secs(1)).await;
    const ROWS: i64 = 400;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO sms (client_id, mobile_no, message)
         SELECT i, '+2547' || printf('%08d', i), 'message ' || i FROM n",
    )
    .bind(ROWS)
    .execute(store.pool())
    .await
    .unwrap();
    let all_sent = eventually(Duration::from_secs(60), || async {
        db.count_status("sent").await == ROWS
    })
    .await;
    let (code_a, logs_a) = terminate(a);
    let (code_b, logs_b) = terminate(b);
    assert!(
        all_sent,
        "only {} of {ROWS} sent\n{logs_a}\n{logs_b}",
        db.count_status("sent").await
    );
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{logs_a}\n{logs_b}");

    let ids = received_ids(&provider).await;
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(
        unique.len() as i64,
        ROWS,
        "every message reached the provider"
    );
    assert_eq!(ids.len() as i64, ROWS, "and none twice");
    for instance in ["node-a", "node-b"] {
        let n = db
            .count(
                "SELECT count(*) FROM sms_attempt WHERE instance = $1",
                &[crate::backends::text(instance)],
            )
            .await;
        assert!(n > 0, "{instance} sent some of the messages");
    }
    assert_eq!(
        db.count("SELECT count(*) FROM sms_attempt", &[]).await,
        ROWS
    );
}

/// Processes starting together on a fresh SQLite file both migrate it: the
/// loser of the race must start anyway (SQLite has no advisory lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_migrations_on_one_sqlite_file_both_succeed() {
    for _ in 0..20 {
        let dir =
            std::env::temp_dir().join(format!("smsrelay-race-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("smsrelay.db").display());
        let a = SqliteStore::open(&options(&url)).unwrap();
        let b = SqliteStore::open(&options(&url)).unwrap();
        // As the daemon starts: migrate, retrying what is transient (SQLITE_BUSY).
        let stop = tokio_util::sync::CancellationToken::new();
        let (ra, rb) = tokio::join!(
            smsrelay::app::wait_for_database(&a, &stop),
            smsrelay::app::wait_for_database(&b, &stop)
        );
        assert!(matches!((&ra, &rb), (Ok(true), Ok(true))), "{ra:?} {rb:?}");
        assert!(a.ready().await.unwrap() && b.ready().await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
