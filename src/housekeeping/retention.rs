//! Retention: finished messages older than `[housekeeping] retention` are
//! deleted with their attempt and event rows, so the tables (and the cost of
//! every index on them) stop growing with the years. Each batch is its own
//! short transaction under the database's retention lock; a run goes on
//! batch after batch until nothing old is left.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, invalid};
use crate::store::{Store, StoreError};

/// 90 days: long enough for any delivery report and for most disputes.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// The shortest retention allowed (other than off): a delivery report that
/// arrives for a deleted message is lost, and providers send them for hours.
const MIN_RETENTION: Duration = Duration::from_secs(3600);

/// The largest batch: one batch is one transaction, and it must stay short.
const MAX_BATCH: u32 = 10_000;

/// The shortest pause between two batches.
const MIN_PAUSE: Duration = Duration::from_millis(10);

/// Retention, resolved from `[housekeeping]`.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// Zero: retention is off.
    pub older_than: Duration,
    pub schedule: String,
    pub batch: u32,
}

impl RetentionSettings {
    /// Whether anything is ever deleted.
    pub fn enabled(&self) -> bool {
        !self.older_than.is_zero()
    }

    /// Checks what types alone cannot, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::validate_cron(&self.schedule)
            .map_err(|e| invalid("housekeeping.retention_schedule", e))?;
        if self.enabled() && self.older_than < MIN_RETENTION {
            return Err(invalid(
                "housekeeping.retention",
                "must be 0s / \"off\" (keep everything) or at least 1h (a delivery report for a deleted message is lost)",
            ));
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(invalid(
                "housekeeping.retention_batch",
                format!(
                    "must be between 1 and {MAX_BATCH} (each batch is one transaction; keep it short)"
                ),
            ));
        }
        Ok(())
    }
}

/// What one retention run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    pub messages: u64,
    pub attempts: u64,
    pub events: u64,
    /// Transactions that deleted something, or found nothing left.
    pub batches: u64,
    /// Another instance held the retention lock, so this run left the work to it.
    pub skipped: bool,
}

/// One retention run: batches until one comes back short, another instance
/// holds the lock, or `stop`. Logs one line with the counts. Public for tests.
pub async fn retain_once(
    store: &dyn Store,
    settings: &RetentionSettings,
    stop: &CancellationToken,
) -> Result<RetentionReport, StoreError> {
    let mut total = RetentionReport::default();
    if !settings.enabled() {
        return Ok(total);
    }
    let older_than = duration_or_off::text(settings.older_than);
    let older_than = older_than.as_str();
    let started = Instant::now();
    loop {
        let batch_started = Instant::now();
        let batch = match store
            .delete_finished(settings.older_than, settings.batch)
            .await
        {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    messages = total.messages,
                    attempts = total.attempts,
                    events = total.events,
                    batches = total.batches,
                    "retention stopped by a database error; the next run goes on where it stopped"
                );
                return Err(e);
            }
        };
        if batch.skipped {
            total.skipped = true;
            break;
        }
        total.batches += 1;
        total.messages += batch.messages;
        total.attempts += batch.attempts;
        total.events += batch.events;
        for (table, n) in [
            ("sms", batch.messages),
            ("sms_attempt", batch.attempts),
            ("sms_event", batch.events),
        ] {
            metrics::counter!("smsrelay_retention_deleted_total", "table" => table).increment(n);
        }
        if batch.messages < u64::from(settings.batch) || stop.is_cancelled() {
            break;
        }
        // As long a pause as the batch took: the platform's and the
        // dispatcher's writes get the database at least half the time (on
        // SQLite, its single write lock).
        let pause = batch_started.elapsed().max(MIN_PAUSE);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => break,
        }
    }
    tracing::info!(
        messages = total.messages,
        attempts = total.attempts,
        events = total.events,
        batches = total.batches,
        skipped = total.skipped,
        elapsed = ?started.elapsed(),
        "retention: deleted finished messages last changed more than {older_than} ago{}",
        if total.skipped {
            " (another instance holds the retention lock and does the rest)"
        } else {
            ""
        }
    );
    Ok(total)
}

/// `housekeeping.retention` as a duration, where `off` means zero.
pub(crate) mod duration_or_off {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// `off`, whole days as `90days` (humantime would print "2months 29days
    /// 2h 52m 48s"), anything else as humantime does.
    pub fn text(value: Duration) -> String {
        const DAY: u64 = 24 * 3600;
        let secs = value.as_secs();
        if value.is_zero() {
            "off".into()
        } else if secs.is_multiple_of(DAY) && value.subsec_nanos() == 0 {
            format!("{}days", secs / DAY)
        } else {
            humantime::format_duration(value).to_string()
        }
    }

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&text(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "{e}: expected a duration such as \"90days\", or \"off\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(older_than: Duration, schedule: &str, batch: u32) -> RetentionSettings {
        RetentionSettings {
            older_than,
            schedule: schedule.into(),
            batch,
        }
    }

    #[test]
    fn bad_retention_settings_name_their_key() {
        for (case, key) in [
            (
                settings(Duration::from_secs(60), "0 30 3 * * *", 1000),
                "housekeeping.retention",
            ),
            (
                settings(DEFAULT_RETENTION, "nightly", 1000),
                "housekeeping.retention_schedule",
            ),
            (
                settings(DEFAULT_RETENTION, "0 30 3 * * *", 0),
                "housekeeping.retention_batch",
            ),
            (
                settings(DEFAULT_RETENTION, "0 30 3 * * *", 10_001),
                "housekeeping.retention_batch",
            ),
        ] {
            let error = case.validate().unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{case:?}: {error}");
        }
        settings(Duration::ZERO, "0 30 3 * * *", 1000)
            .validate()
            .expect("off is valid");
        settings(Duration::from_secs(3600), "0 30 3 * * *", 10_000)
            .validate()
            .expect("the bounds are valid");
    }
}
