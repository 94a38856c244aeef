//! `smsrelay demo`: the first run. Starts the daemon as configured (with no
//! configuration: SQLite in the working directory and the dry-run `log`
//! provider), sends one SMS through its own API to a made-up client, prints
//! the message as it goes from `pending` to `sent`, then keeps running.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::app::Application;
use crate::settings::Config;
use crate::store::Dialect;

/// Runs the demo until SIGTERM / SIGINT.
pub async fn run(mut config: Config) -> anyhow::Result<()> {
    if !config.api.enabled
        || !config.api.tokens.is_empty()
        || config.api.dev_token_file.as_os_str().is_empty()
    {
        anyhow::bail!(
            "smsrelay demo calls its own API with the development token: run it with [api] enabled, no [[api.tokens]] and api.dev_token_file set (the defaults)"
        );
    }
    let options = config.store_options()?;
    let dialect = Dialect::of_url(&options.url)?;
    // Only where the operator has not chosen a directory: the demo never shadows real data.
    if config.directory.client_query.is_none() && config.directory.staff_query.is_none() {
        config.directory = dialect.demo_directory();
    }
    let app = Application::build(&config)?;
    let store = app.store.clone();
    let addr = app
        .api_addr()
        .ok_or_else(|| anyhow::anyhow!("the API did not bind"))?;
    let stop = CancellationToken::new();
    crate::shutdown::cancel_on_signal(stop.clone())?;
    let daemon = tokio::spawn(app.run_until_stopped(stop.clone()));

    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let token_file = config.api.dev_token_file.display().to_string();
    let provider = config.provider.kind.as_str();
    println!(
        "smsrelay demo: database {}, provider {provider}, API {base}",
        redact_url(&options.url)
    );
    // Wait until the database is reachable and migrated.
    loop {
        if stop.is_cancelled() {
            return daemon.await?;
        }
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.create_demo_directory().await?;
    let token = std::fs::read_to_string(&config.api.dev_token_file)?
        .trim()
        .to_owned();
    println!(
        "demo directory: table smsrelay_demo_directory (DEMO DATA: client 1, client 2 without a number, staff 1)"
    );

    let body = serde_json::json!({"message": "Hello from smsrelay: your repayment of KES 1,200 is due on Friday.", "clientId": 1});
    println!(
        "\n$ curl -X POST {base}/sms -H \"Authorization: Bearer $(cat {token_file})\" -H 'Content-Type: application/json' -d '{body}'"
    );
    let created: serde_json::Value = http
        .post(format!("{base}/sms"))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    println!("{}", serde_json::to_string_pretty(&created)?);
    let id = created["resourceId"].as_i64().unwrap_or_default();

    let mut last_status = String::new();
    let detail = loop {
        let detail: serde_json::Value = http
            .get(format!("{base}/sms/{id}"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let status = detail["status"].as_str().unwrap_or_default().to_owned();
        if status != last_status {
            println!("status: {status}");
            last_status = status.clone();
        }
        if !matches!(status.as_str(), "pending" | "sending") || stop.is_cancelled() {
            break detail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("\n$ curl {base}/sms/{id} -H \"Authorization: Bearer $(cat {token_file})\"");
    println!("{}", serde_json::to_string_pretty(&detail)?);
    println!(
        "\nThe daemon keeps running. Try: curl '{base}/sms?clientId=1' -H \"Authorization: Bearer $(cat {token_file})\"\nor INSERT INTO sms (client_id, mobile_no, message) VALUES (...) in the database. Ctrl-C stops it."
    );
    daemon.await?
}

/// The URL without its password, for the banner.
fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("****"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
