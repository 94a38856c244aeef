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

fn notify(state: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(state)
    {
        tracing::debug!(error = %e, "systemd notification failed");
    }
}
