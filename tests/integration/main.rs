//! End-to-end tests: the real `pmhost` binary, real plugins, real signals, one private sandbox per test.

mod harness;
mod pg;

mod async_jobs;
mod bad_plugins;
mod capture;
mod compatibility;
mod config;
mod control;
mod ecosystem;
mod engine;
mod footprint;
mod hardening;
mod identity;
mod logs;
mod many;
mod new;
mod pg_queue;
mod restart;
mod status;
mod supervision;
mod top;
mod upgrade;
mod wakeup;
mod warm;
mod watch;
