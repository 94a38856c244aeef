//! The database's ceiling for the daemon's own SQL: the store's claim
//! (expiry sweep, then claim with its attempt and event rows) and its
//! outcome write (update, attempt, event), called in a tight loop on a few
//! connections, with no HTTP and no dispatcher in between. It calls the
//! store (`PgStore`) rather than copies of its statements, so it stays in
//! step with whatever SQL the daemon runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use smsrelay::domain::{AttemptOutcome, ClaimedSms, NextState, Outcome};
use smsrelay::store::postgres::PgStore;
use smsrelay::store::{Queue, StoreOptions};

use crate::Args;
use crate::database::{BackendCpu, FreshDb};

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub messages: i64,
    pub connections: u32,
    pub batch_size: u32,
    pub seconds: f64,
    pub per_second: f64,
    pub db_cpu_seconds: Option<f64>,
    pub sent: i64,
}

/// The outcome the dispatcher records for a message the webhook accepted.
fn accepted(sms: &ClaimedSms) -> Outcome {
    Outcome {
        id: sms.id,
        attempt: sms.attempt,
        outcome: AttemptOutcome::Accepted,
        next: NextState::Sent,
        http_status: Some(200),
        provider_message_id: Some(format!("bench-{}", sms.id)),
        provider: Some("webhook".into()),
        error: None,
        segments: Some(1),
        reason: "accepted by provider webhook".into(),
    }
}

/// Claims and records until a claim comes back empty; how many it recorded.
async fn drain(store: Arc<PgStore>, instance: String, batch_size: u32) -> anyhow::Result<u64> {
    let mut recorded = 0;
    loop {
        let claim = store
            .claim(&instance, batch_size, Duration::from_secs(60))
            .await?;
        if claim.messages.is_empty() {
            return Ok(recorded);
        }
        let outcomes: Vec<Outcome> = claim.messages.iter().map(accepted).collect();
        recorded += store.record_outcomes(&instance, &outcomes).await?.applied;
    }
}

pub async fn run(args: &Args) -> anyhow::Result<Ceiling> {
    let db = FreshDb::create(&args.database_url, "ceiling").await?;
    let result = run_on(&db, args).await;
    db.drop_now().await;
    result
}

async fn run_on(db: &FreshDb, args: &Args) -> anyhow::Result<Ceiling> {
    crate::daemon::migrate(&db.url)?;
    db.insert_messages(args.messages).await?;
    let store = Arc::new(
        PgStore::open(&StoreOptions {
            url: db.url.clone(),
            pool_size: args.ceiling_connections,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            directory: Default::default(),
            session: Default::default(),
        })
        .context("ceiling: open the store")?,
    );
    let cpu = BackendCpu::start(db);
    let started = Instant::now();
    let loops: Vec<_> = (0..args.ceiling_connections)
        .map(|i| {
            tokio::spawn(drain(
                store.clone(),
                format!("ceiling-{i}"),
                args.batch_size,
            ))
        })
        .collect();
    for task in loops {
        task.await.context("ceiling loop")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let db_cpu_seconds = cpu.finish().await;
    store.pool().close().await;
    let sent = db.statuses().await?.get("sent").copied().unwrap_or(0);
    Ok(Ceiling {
        messages: args.messages,
        connections: args.ceiling_connections,
        batch_size: args.batch_size,
        seconds,
        per_second: args.messages as f64 / seconds,
        db_cpu_seconds,
        sent,
    })
}
