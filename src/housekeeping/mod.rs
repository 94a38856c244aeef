//! Maintenance jobs on cron schedules (tokio-cron-scheduler, kept behind this
//! module so it can be swapped): the lease reaper, retention, and the count
//! of messages overdue for a delivery report. The reaper and retention guard
//! themselves with a database lock, so several instances can run the same
//! schedule safely; the count only reads, and each instance exports its own.

mod overdue;
mod retention;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, invalid};
use crate::domain::outcome::Guarantee;
use crate::store::{ReapReport, Store, StoreError};

pub use overdue::{OVERDUE_SCHEDULE, OverdueSettings, refresh_overdue};
pub(crate) use retention::duration_or_off;
pub use retention::{RetentionReport, RetentionSettings, retain_once};

/// `[housekeeping]`: maintenance jobs, as cron expressions with seconds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HousekeepingSettings {
    /// When to return rows whose lease expired to `pending`.
    pub reaper: String,
    /// Rows handled per reaper run.
    pub reaper_batch: u32,
    /// Finished messages last changed longer ago than this are deleted with
    /// their history; `0s` or `off` keeps everything.
    #[serde(with = "retention::duration_or_off")]
    pub retention: Duration,
    /// When to run retention.
    pub retention_schedule: String,
    /// Messages deleted per retention transaction.
    pub retention_batch: u32,
}

impl Default for HousekeepingSettings {
    fn default() -> Self {
        Self {
            reaper: "*/5 * * * * *".into(),
            reaper_batch: 1000,
            retention: retention::DEFAULT_RETENTION,
            retention_schedule: "0 30 3 * * *".into(),
            retention_batch: 1000,
        }
    }
}

impl HousekeepingSettings {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_cron(&self.reaper).map_err(|e| invalid("housekeeping.reaper", e))?;
        if self.reaper_batch == 0 {
            return Err(invalid("housekeeping.reaper_batch", "must be at least 1"));
        }
        self.retention().validate()
    }

    /// Retention's settings.
    pub fn retention(&self) -> RetentionSettings {
        RetentionSettings {
            older_than: self.retention,
            schedule: self.retention_schedule.clone(),
            batch: self.retention_batch,
        }
    }

    /// The reaper's settings; `max_attempts` and `guarantee` are
    /// `[dispatch]`'s, so an abandoned attempt ends as an ambiguous send would.
    pub fn reaper(&self, max_attempts: u32, guarantee: Guarantee) -> ReaperSettings {
        ReaperSettings {
            schedule: self.reaper.clone(),
            max_attempts,
            guarantee,
            batch: self.reaper_batch,
        }
    }
}

/// Settings of the lease reaper, resolved from `[housekeeping]` and `[dispatch]`.
#[derive(Debug, Clone)]
pub struct ReaperSettings {
    pub schedule: String,
    pub max_attempts: u32,
    /// Under at-most-once an abandoned attempt fails its message.
    pub guarantee: Guarantee,
    pub batch: u32,
}

/// Checks a cron expression (with a seconds field) the way the scheduler will read it.
pub fn validate_cron(expression: &str) -> Result<(), String> {
    Job::new_async(expression, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| format!("is not a cron expression with seconds (e.g. \"*/5 * * * * *\"): {e}"))
}

/// One reaper pass, in batches until nothing is left. Public for tests.
pub async fn reap_once(
    store: &dyn Store,
    settings: &ReaperSettings,
) -> Result<ReapReport, StoreError> {
    let mut total = ReapReport::default();
    loop {
        let pass = store
            .reap_expired_leases(settings.max_attempts, settings.guarantee, settings.batch)
            .await?;
        total.requeued += pass.requeued;
        total.failed += pass.failed;
        total.reported += pass.reported;
        total.skipped |= pass.skipped;
        if pass.skipped || pass.requeued + pass.failed + pass.reported < u64::from(settings.batch) {
            break;
        }
    }
    if total.requeued + total.failed + total.reported > 0 {
        tracing::warn!(
            requeued = total.requeued,
            failed = total.failed,
            reported = total.reported,
            "recovered messages whose lease expired (an instance crashed or hung; they may have been sent)"
        );
    }
    Ok(total)
}

/// The running maintenance jobs.
pub struct Housekeeping {
    scheduler: JobScheduler,
    /// Ends a retention run between two batches at shutdown.
    stop: CancellationToken,
}

impl Housekeeping {
    /// Schedules the jobs and starts them (retention and the overdue count
    /// only when they are on).
    pub async fn start(
        store: Arc<dyn Store>,
        reaper: ReaperSettings,
        retention: RetentionSettings,
        overdue: OverdueSettings,
    ) -> Result<Self, JobSchedulerError> {
        let scheduler = JobScheduler::new().await?;
        if overdue.enabled() {
            let overdue_store = store.clone();
            let job = Job::new_async(OVERDUE_SCHEDULE, move |_, _| {
                let store = overdue_store.clone();
                let overdue = overdue.clone();
                Box::pin(async move {
                    if let Err(e) = refresh_overdue(store.as_ref(), &overdue).await {
                        tracing::warn!(error = %e, "counting messages overdue for a delivery report failed; next run will retry");
                    }
                })
            })?;
            scheduler.add(job).await?;
        } else {
            // Exported all the same, so that a dashboard sees "none" rather than "missing".
            metrics::gauge!("smsrelay_reports_overdue").set(0.0);
        }
        let stop = CancellationToken::new();
        let schedule = reaper.schedule.clone();
        let reaper_store = store.clone();
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            let store = reaper_store.clone();
            let reaper = reaper.clone();
            Box::pin(async move {
                if let Err(e) = reap_once(store.as_ref(), &reaper).await {
                    tracing::warn!(error = %e, "lease reaper failed; next run will retry");
                }
            })
        })?;
        scheduler.add(job).await?;
        if retention.enabled() {
            let schedule = retention.schedule.clone();
            let stop = stop.clone();
            let job = Job::new_async(schedule.as_str(), move |_, _| {
                let store = store.clone();
                let retention = retention.clone();
                let stop = stop.clone();
                Box::pin(async move {
                    if let Err(e) = retain_once(store.as_ref(), &retention, &stop).await {
                        tracing::warn!(error = %e, "retention failed; the next run goes on where it stopped");
                    }
                })
            })?;
            scheduler.add(job).await?;
        } else {
            tracing::info!("retention is off (housekeeping.retention): finished messages are kept");
        }
        scheduler.start().await?;
        Ok(Self { scheduler, stop })
    }

    /// Stops scheduling new runs; a retention run stops after its current batch.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Err(e) = self.scheduler.shutdown().await {
            tracing::debug!(error = %e, "housekeeping scheduler did not stop cleanly");
        }
    }
}
