//! smsrelay: the SMS outbox daemon of a core-banking platform.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod domain;
pub mod housekeeping;
pub mod provider;
pub mod secrets;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod systemd;
pub mod telemetry;

pub use settings::Config;
