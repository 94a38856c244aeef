//! `[dispatch]` and `[validation]`: how the dispatcher claims, sends and
//! retries, and what a message must satisfy before it is sent.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Options, Rules};
use crate::config::{ConfigError, invalid};
use crate::domain::outcome::Guarantee;
use crate::domain::phone::Region;
use crate::domain::retry::RetryPolicy;

/// The shortest lease allowed: renewed every lease/3, it must leave room
/// for a database round trip.
const MIN_LEASE: Duration = Duration::from_secs(3);

/// `[dispatch]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchSettings {
    /// Name written to `locked_by` and `sms_attempt.instance`; defaults to host-pid.
    pub instance_id: Option<String>,
    pub batch_size: u32,
    pub concurrency: u32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    pub backoff_multiplier: f64,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// What an ambiguous send (request written, answer lost) leads to.
    pub guarantee: Guarantee,
    /// Wake up when the platform inserts a message instead of at the next
    /// poll, where the database can tell cheaply (SQLite `PRAGMA data_version`,
    /// PostgreSQL LISTEN/NOTIFY while idle). Off behind a transaction-mode pooler.
    pub wake_on_insert: bool,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            instance_id: None,
            batch_size: 256,
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            max_attempts: 8,
            backoff_initial: Duration::from_secs(10),
            backoff_max: Duration::from_secs(3600),
            backoff_multiplier: 3.0,
            shutdown_grace: Duration::from_secs(20),
            guarantee: Guarantee::AtLeastOnce,
            wake_on_insert: true,
        }
    }
}

impl DispatchSettings {
    /// Checks what types alone cannot. `db_call` is the longest a database
    /// call may take (`database.call_timeout`).
    pub fn validate(&self, db_call: Duration) -> Result<(), ConfigError> {
        if self.batch_size == 0 {
            return Err(invalid("dispatch.batch_size", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(invalid("dispatch.concurrency", "must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(invalid("dispatch.max_attempts", "must be at least 1"));
        }
        if !(self.backoff_multiplier >= 1.0 && self.backoff_multiplier.is_finite()) {
            return Err(invalid(
                "dispatch.backoff_multiplier",
                "must be a number >= 1",
            ));
        }
        if self.backoff_initial > self.backoff_max {
            return Err(invalid(
                "dispatch.backoff_initial",
                "must not exceed dispatch.backoff_max",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(invalid("dispatch.poll_interval", "must be more than 0s"));
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty() || id.len() > 200)
        {
            return Err(invalid(
                "dispatch.instance_id",
                "must be 1 to 200 characters",
            ));
        }
        // The lease is renewed every lease/3 while sends are in flight, so it
        // only has to outlive one renewal interval plus a database call (at
        // most database.call_timeout), not a batch.
        if self.lease < MIN_LEASE {
            return Err(invalid(
                "dispatch.lease",
                format!(
                    "must be at least {} (it is renewed every lease/3 while sends are in flight)",
                    humantime::format_duration(MIN_LEASE)
                ),
            ));
        }
        let renewal_slack = self.lease - self.lease / 3;
        if renewal_slack <= db_call {
            return Err(invalid(
                "dispatch.lease",
                format!(
                    "must exceed 1.5 x database.call_timeout = {}, so that a renewal every lease/3 lands before the lease runs out",
                    humantime::format_duration(db_call * 3 / 2)
                ),
            ));
        }
        Ok(())
    }

    /// The retry schedule these settings describe.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts,
            initial: self.backoff_initial,
            max: self.backoff_max,
            multiplier: self.backoff_multiplier,
        }
    }

    /// The instance id written to leases and attempts: the configured one, or
    /// host-pid-random. The random part keeps two hosts that cannot read
    /// their hostname (sandboxed /proc) from sharing an id and each other's leases.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
                .iter()
                .find_map(|path| {
                    std::fs::read_to_string(path)
                        .ok()
                        .map(|h| h.trim().to_owned())
                        .filter(|h| !h.is_empty())
                })
                .unwrap_or_else(|| "smsrelay".into());
            format!(
                "{host}-{}-{:06x}",
                std::process::id(),
                rand::random::<u32>() & 0xff_ffff
            )
        })
    }

    /// The dispatcher's options, with the instance id and the rules resolved.
    /// `step_limit` is the longest one send or database call may take,
    /// `call_timeout` the longest a database call may take.
    pub fn options(
        &self,
        validation: &ValidationSettings,
        step_limit: Duration,
        call_timeout: Duration,
    ) -> Options {
        Options {
            instance: self.instance_id(),
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            poll_interval: self.poll_interval,
            wake_on_insert: self.wake_on_insert,
            lease: self.lease,
            retry: self.retry_policy(),
            guarantee: self.guarantee,
            shutdown_grace: self.shutdown_grace,
            rules: validation.rules(),
            watchdog_every: crate::systemd::watchdog_interval()
                .map_or(Duration::from_secs(5), |interval| interval / 4),
            step_limit,
            call_timeout,
        }
    }
}

/// `[validation]`: checks made before a message is handed to a provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSettings {
    /// ISO 3166-1 region for numbers stored in national form (e.g. "KE").
    pub default_region: Option<String>,
    /// Longer messages are declined, never truncated.
    pub max_segments: u32,
}

impl Default for ValidationSettings {
    fn default() -> Self {
        Self {
            default_region: None,
            max_segments: 10,
        }
    }
}

impl ValidationSettings {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(region) = &self.default_region {
            region
                .parse::<Region>()
                .map_err(|e| invalid("validation.default_region", e.to_string()))?;
        }
        if self.max_segments == 0 {
            return Err(invalid("validation.max_segments", "must be at least 1"));
        }
        Ok(())
    }

    /// The rules the dispatcher and `POST /sms` apply (a region that does not
    /// parse was refused by [`Self::validate`]).
    pub fn rules(&self) -> Rules {
        Rules {
            default_region: self.default_region.as_deref().and_then(|r| r.parse().ok()),
            max_segments: self.max_segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_lease(lease: Duration) -> DispatchSettings {
        DispatchSettings {
            lease,
            ..DispatchSettings::default()
        }
    }

    #[test]
    fn the_lease_only_has_to_outlive_a_renewal() {
        let db_call = Duration::from_secs(5);
        assert!(DispatchSettings::default().validate(db_call).is_ok());
        assert!(DispatchSettings::default().lease <= Duration::from_secs(30));
        // Shorter than a batch of slow sends is fine: it is renewed meanwhile.
        assert!(with_lease(Duration::from_secs(8)).validate(db_call).is_ok());
        assert!(
            with_lease(Duration::from_secs(3))
                .validate(Duration::from_secs(1))
                .is_ok()
        );

        let too_short = with_lease(Duration::from_secs(2)).validate(Duration::from_secs(1));
        assert_eq!(
            too_short.unwrap_err().to_string(),
            "config key `dispatch.lease`: must be at least 3s (it is renewed every lease/3 while sends are in flight)"
        );
        let no_room = with_lease(Duration::from_secs(6)).validate(db_call);
        assert_eq!(
            no_room.unwrap_err().to_string(),
            "config key `dispatch.lease`: must exceed 1.5 x database.call_timeout = 7s 500ms, so that a renewal every lease/3 lands before the lease runs out"
        );
    }
}
