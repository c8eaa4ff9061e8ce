//! # spotkeeper-engine
//!
//! Everything between the command line and the cloud: the config file, the
//! state store, pure launch planning, readiness checks, per-box locks, the
//! box lifecycle (`up`, `stop`, `list`, prices), worker pools, and the
//! daemon (`daemon`: level-triggered passes, tracked per-box and per-pool
//! tasks, the warning fast path) with its HTTP API and metrics.

pub mod api;
pub mod bootstrap;
pub mod boxes;
pub mod charts;
pub mod cleanup;
pub mod config;
pub mod cost;
pub mod daemon;
pub mod desired;
pub mod dns;
pub mod events;
pub mod images;
pub mod lock;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod persist;
pub mod plan;
pub mod policy;
pub mod pools;
pub mod progress;
pub mod ready;
pub mod store;
