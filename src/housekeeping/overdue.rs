//! `smsrelay_reports_overdue`: messages a reporting provider accepted longer
//! than `[provider] report_window` ago that are still `sent` (no final report
//! came). Counted here on a schedule, not per /metrics scrape, so a scraper
//! never makes the database walk the `sent` rows; nothing is ever invented
//! for them: they stay `sent`.

use std::time::Duration;

use crate::store::{OVERDUE_CAP, Store, StoreError};

/// How often the gauge is refreshed (a cron expression with seconds).
pub const OVERDUE_SCHEDULE: &str = "15 * * * * *";

/// What the overdue count needs, from `[provider]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverdueSettings {
    /// The providers whose sections ask for delivery reports.
    pub providers: Vec<String>,
    /// `[provider] report_window`; zero: off.
    pub window: Duration,
}

impl OverdueSettings {
    /// Whether there is anything to count: a window, and a provider that reports.
    pub fn enabled(&self) -> bool {
        !self.window.is_zero() && !self.providers.is_empty()
    }
}

/// Counts once and sets the gauge (0 when off). Public for tests.
pub async fn refresh_overdue(
    store: &dyn Store,
    settings: &OverdueSettings,
) -> Result<u64, StoreError> {
    let overdue = if settings.enabled() {
        store
            .overdue_reports(&settings.providers, settings.window)
            .await?
    } else {
        0
    };
    metrics::gauge!("smsrelay_reports_overdue").set(overdue as f64);
    if overdue > 0 {
        tracing::info!(
            overdue,
            at_most = OVERDUE_CAP,
            window = %humantime::format_duration(settings.window),
            "messages sent without a delivery report within [provider] report_window"
        );
    }
    Ok(overdue)
}
