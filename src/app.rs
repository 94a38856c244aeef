//! Assembles the daemon: store + provider + dispatcher + housekeeping.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dispatch::{Dispatcher, Rules, Settings};
use crate::housekeeping::{Housekeeping, ReaperSettings};
use crate::provider::Provider;
use crate::store::{self, Store, StoreError};

/// Everything `smsrelay run` needs, built but not yet started.
pub struct Application {
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    reaper: ReaperSettings,
}

impl Application {
    /// Builds the parts from a validated config; connects lazily.
    pub fn build(config: &Config) -> anyhow::Result<Self> {
        let store = store::open(&config.store_options()?)?;
        let provider = crate::provider::from_config(config)?;
        Ok(Self::from_parts(config, store, provider))
    }

    /// Builds the parts around a given store and provider (tests use this).
    pub fn from_parts(config: &Config, store: Arc<dyn Store>, provider: Arc<dyn Provider>) -> Self {
        let d = &config.dispatch;
        let settings = Settings {
            instance: config.instance_id(),
            batch_size: d.batch_size,
            concurrency: d.concurrency,
            poll_interval: d.poll_interval,
            lease: d.lease,
            retry: d.retry_policy(),
            shutdown_grace: d.shutdown_grace,
            rules: Rules {
                default_region: config
                    .validation
                    .default_region
                    .as_deref()
                    .and_then(|r| r.parse().ok()),
                max_segments: config.validation.max_segments,
            },
        };
        let reaper = ReaperSettings {
            schedule: config.housekeeping.reaper.clone(),
            max_attempts: d.max_attempts,
            batch: config.housekeeping.reaper_batch,
        };
        let dispatcher = Arc::new(Dispatcher::new(store.clone(), provider, settings));
        Self {
            store,
            dispatcher,
            reaper,
        }
    }

    /// Runs until `stop` is cancelled, then drains and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        if !wait_for_database(self.store.as_ref(), &stop).await? {
            return Ok(());
        }
        crate::systemd::ready();
        tracing::info!("smsrelay ready");
        let housekeeping = Housekeeping::start(self.store.clone(), self.reaper.clone()).await?;
        self.dispatcher.run(stop, crate::systemd::watchdog).await;
        crate::systemd::stopping();
        housekeeping.stop().await;
        tracing::info!("smsrelay stopped");
        Ok(())
    }
}

/// Connects and migrates, retrying with backoff while the database is
/// unreachable. Returns false if `stop` came first.
pub async fn wait_for_database(
    store: &dyn Store,
    stop: &CancellationToken,
) -> Result<bool, StoreError> {
    let attempt = || async { store.migrate().await };
    let retried = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(250))
                .with_max_delay(Duration::from_secs(30))
                .with_jitter()
                .without_max_times(),
        )
        .when(StoreError::is_transient)
        .notify(|e, wait| tracing::warn!(error = %e, retry_in = ?wait, "database not reachable; retrying"));
    tokio::select! {
        result = retried => result.map(|()| true),
        _ = stop.cancelled() => Ok(false),
    }
}

/// `smsrelay migrate`: applies migrations once the database answers.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    let mut options = config.store_options()?;
    options.pool_size = 1;
    let store = store::open(&options)?;
    let stop = CancellationToken::new();
    crate::shutdown::cancel_on_signal(stop.clone())?;
    if wait_for_database(store.as_ref(), &stop).await? {
        tracing::info!("migrations applied");
    }
    Ok(())
}
