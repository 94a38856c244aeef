//! The real SMS providers: each one's exact request and how it classifies
//! every documented reply (against a local mock server), and Kannel for real:
//! bearerbox + smsbox + fakesmsc on loopback.

#[path = "../support/mod.rs"]
mod support;

#[path = "../support/kannel.rs"]
mod kannel;

mod africastalking_provider;
mod infobip_provider;
mod kannel_daemon;
mod kannel_gateway;
mod kannel_provider;
mod twilio_provider;
mod webhook_template;
