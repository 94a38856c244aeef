//! systemd notifications (`Type=notify`): no-ops when not run by systemd.

use sd_notify::NotifyState;

/// READY=1: connected and migrated.
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// STOPPING=1: shutdown has begun.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// WATCHDOG=1: the dispatcher loop is alive.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// systemd's watchdog interval (WatchdogSec=, passed as WATCHDOG_USEC), if it watches us.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
}

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}
