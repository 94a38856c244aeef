//! `smsrelay-bench` itself: its burn-down checks the counts it reports, and
//! exits 1 when they are wrong (what tests/run.sh relies on). Timings are
//! never asserted.

use std::process::Command;

use crate::support::admin_url;

/// The bench's burn-down on `messages` messages, with `env` for the daemon; its exit code and JSON report.
fn burn_down(messages: u32, env: &[(&str, &str)]) -> (Option<i32>, serde_json::Value) {
    let json = std::env::temp_dir().join(format!(
        "smsrelay-bench-smoke-{}-{messages}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_smsrelay-bench"))
        .args([
            "--sections",
            "burndown",
            "--messages",
            &messages.to_string(),
        ])
        .arg("--database-url")
        .arg(admin_url())
        .arg("--json")
        .arg(&json)
        .env("SMSRELAY_BIN", env!("CARGO_BIN_EXE_smsrelay"))
        .envs(env.iter().copied())
        .output()
        .expect("run smsrelay-bench");
    let report = std::fs::read_to_string(&json).unwrap_or_else(|_| {
        panic!(
            "no report; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_file(&json);
    (
        out.status.code(),
        serde_json::from_str(&report).expect("the report is JSON"),
    )
}

#[test]
fn a_burn_down_reports_every_message_sent_once() {
    let (code, report) = burn_down(300, &[]);
    assert_eq!(code, Some(0), "report: {report}");
    let run = &report["burndown"];
    assert_eq!(run["sent"], 300);
    assert_eq!(run["provider_requests"], 300);
    assert_eq!(run["provider_distinct_ids"], 300);
    assert_eq!(run["duplicate_requests"], 0);
    assert_eq!(report["counts_ok"], true);
}

#[test]
fn a_burn_down_with_messages_not_sent_exits_1() {
    // A request template without the text: the bench's provider answers 400,
    // so every message is declined instead of sent.
    let (code, report) = burn_down(
        100,
        &[("SMSRELAY_PROVIDER__WEBHOOK__BODY", r#"{"id": {{id}}}"#)],
    );
    assert_eq!(code, Some(1), "report: {report}");
    assert_eq!(report["burndown"]["sent"], 0);
    assert_eq!(report["counts_ok"], false);
}
