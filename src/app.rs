//! Assembles the daemon from its settings: store + provider + dispatcher +
//! housekeeping, and the API with the provider's callback routes.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use crate::api::ApiState;
use crate::api::auth::Authenticator;
use crate::dispatch::Dispatcher;
use crate::housekeeping::{Housekeeping, OverdueSettings, ReaperSettings, RetentionSettings};
use crate::provider::{CallbackContext, Provider};
use crate::settings::Config;
use crate::store::{self, Store, StoreError};

/// Everything `smsrelay run` needs, built but not yet started.
pub struct Application {
    pub store: Arc<dyn Store>,
    pub dispatcher: Arc<Dispatcher>,
    provider: Arc<dyn Provider>,
    reaper: ReaperSettings,
    retention: RetentionSettings,
    overdue: OverdueSettings,
    /// The bound API listener and its router (None when `[api] enabled = false`).
    api: Option<(
        std::net::TcpListener,
        axum::Router,
        crate::api::server::ConnectionLimits,
    )>,
}

impl Application {
    /// Builds the parts from a validated config; connects lazily, binds the API now.
    pub fn build(config: &Config) -> anyhow::Result<Self> {
        let store = store::open(&config.store_options()?)?;
        Self::with_store(config, store)?.with_api(config)
    }

    /// Builds the parts around a given store, the provider (or providers, in
    /// failover order) from the config (tests use this).
    pub fn with_store(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let provider = config.provider.build()?;
        Ok(Self::assemble(config, store, provider))
    }

    /// Binds `[api] listen` and prepares the router (no-op when the API is disabled).
    pub fn with_api(mut self, config: &Config) -> anyhow::Result<Self> {
        if !config.api.enabled {
            return Ok(self);
        }
        let dev_file = &config.api.dev_token_file;
        let auth = if !config.api.tokens.is_empty() {
            Authenticator::from_settings(&config.api)?
        } else if !dev_file.as_os_str().is_empty() {
            let auth = crate::api::auth::dev_token(dev_file)?;
            tracing::warn!(
                file = %dev_file.display(),
                "no [[api.tokens]] configured: the API accepts the development token kept in this file (sms:read, sms:send); configure tokens for production"
            );
            auth
        } else {
            tracing::warn!(
                "no [[api.tokens]] configured and api.dev_token_file is empty: every /sms request will get 401 (create a token with `smsrelay token new`)"
            );
            Authenticator::default()
        };
        // The API's pools are its own: however many of its requests wait on a
        // slow query or a lock, the dispatcher's connections stay free.
        let api_store = store::open(&config.api_store_options()?)?;
        let reads = match config.api_read_store_options()? {
            Some(replica) => store::open(&replica)?,
            None => api_store.clone(),
        };
        let state = ApiState {
            store: api_store.clone(),
            reads,
            auth: Arc::new(auth),
            wake: self.dispatcher.waker(),
            rules: self.dispatcher.rules(),
            body_read_timeout: config.api.body_read_timeout,
            default_limit: config.api.default_limit,
            max_limit: config.api.max_limit,
            max_offset: config.api.max_offset,
            metrics: crate::api::metrics::install(),
        };
        let listener = std::net::TcpListener::bind(config.api.listen).map_err(|e| {
            anyhow::anyhow!(
                "config key `api.listen`: cannot listen on {}: {e}",
                config.api.listen
            )
        })?;
        listener.set_nonblocking(true)?;
        let callbacks = crate::provider::callback_router(
            self.provider.as_ref(),
            &CallbackContext { store: api_store },
        );
        self.api = Some((
            listener,
            crate::api::router(state, &config.api, callbacks),
            crate::api::server::ConnectionLimits::from_settings(&config.api),
        ));
        Ok(self)
    }

    /// Where the API listens, once bound.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.as_ref().and_then(|(l, _, _)| l.local_addr().ok())
    }

    /// Builds the parts around a given store and provider (tests use this);
    /// the provider goes behind its health gate, with its section's limits.
    pub fn from_parts(config: &Config, store: Arc<dyn Store>, provider: Arc<dyn Provider>) -> Self {
        let provider = config.provider.gate(provider);
        Self::assemble(config, store, provider)
    }

    /// The parts around a provider that is ready to send (gated, routed).
    fn assemble(config: &Config, store: Arc<dyn Store>, provider: Arc<dyn Provider>) -> Self {
        // A send is bounded by provider.timeout (after waiting at most its
        // longest rate-limit wait) and a database call by
        // database.call_timeout; a step longer than both means the loop is stuck.
        let send_limit = config.provider.timeout.saturating_add(
            config
                .provider
                .longest_rate_wait(config.validation.max_segments),
        );
        let step_limit = send_limit.max(config.database.call_timeout) + Duration::from_secs(5);
        let options =
            config
                .dispatch
                .options(&config.validation, step_limit, config.database.call_timeout);
        let reaper = config
            .housekeeping
            .reaper(config.dispatch.max_attempts, config.dispatch.guarantee);
        let dispatcher = Arc::new(Dispatcher::new(store.clone(), provider.clone(), options));
        Self {
            store,
            dispatcher,
            provider,
            reaper,
            retention: config.housekeeping.retention(),
            overdue: OverdueSettings {
                providers: config.provider.reporting(),
                window: config.provider.report_window,
            },
            api: None,
        }
    }

    /// Runs until `stop` is cancelled, then drains and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let Application {
            store,
            dispatcher,
            reaper,
            retention,
            overdue,
            api,
            ..
        } = self;
        // The API answers from the start: /healthz at once, /readyz once the database is migrated.
        let api = match api {
            Some((listener, router, limits)) => {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tracing::info!(listen = %listener.local_addr()?, "API listening");
                Some(tokio::spawn(crate::api::serve(
                    listener,
                    router,
                    limits,
                    stop.clone(),
                )))
            }
            None => None,
        };
        let result = run_dispatcher(store, &dispatcher, (reaper, retention, overdue), &stop).await;
        // Whatever ended the dispatcher ends the API too.
        stop.cancel();
        if let Some(api) = api {
            match api.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "API server ended with an error"),
                Err(e) => tracing::warn!(error = %e, "API server task failed"),
                Ok(Ok(())) => {}
            }
        }
        tracing::info!("smsrelay stopped");
        result
    }
}

/// Waits for the database, then runs the dispatcher and housekeeping until `stop`.
async fn run_dispatcher(
    store: Arc<dyn Store>,
    dispatcher: &Dispatcher,
    (reaper, retention, overdue): (ReaperSettings, RetentionSettings, OverdueSettings),
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    if !wait_for_database(store.as_ref(), stop).await? {
        return Ok(());
    }
    crate::systemd::ready();
    tracing::info!("smsrelay ready");
    let housekeeping = Housekeeping::start(store, reaper, retention, overdue).await?;
    dispatcher.run(stop.clone(), crate::systemd::watchdog).await;
    crate::systemd::stopping();
    housekeeping.stop().await;
    Ok(())
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
/// `smsrelay opt-out remove <number>`: clears the number's opt-out and says
/// whether there was one (on stdout, the number masked).
pub async fn remove_opt_out(config: &Config, number: &str) -> anyhow::Result<()> {
    let rules = config.validation.rules();
    let number = crate::domain::phone::E164::parse(number, rules.default_region)
        .map_err(|e| anyhow::anyhow!("number: {e}"))?;
    let key = crate::domain::opt_out::OptOutKey::of(&number);
    let mut options = config.store_options()?;
    options.pool_size = 1;
    let store = store::open(&options)?;
    if store.remove_opt_out(&key).await? {
        println!("opt-out of {number} removed: messages to it will be sent again");
    } else {
        println!("{number} was not opted out; nothing changed");
    }
    Ok(())
}

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
