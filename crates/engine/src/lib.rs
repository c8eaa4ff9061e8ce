//! # spotkeeper-engine
//!
//! Everything between the command line and the cloud: the config file, the
//! state store, pure launch planning, readiness checks, per-box locks and the
//! box lifecycle (`up`, `stop`, `list`, prices).

pub mod api;
pub mod bootstrap;
pub mod boxes;
pub mod cleanup;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod events;
pub mod images;
pub mod lock;
pub mod metrics;
pub mod persist;
pub mod plan;
pub mod policy;
pub mod pools;
pub mod ready;
pub mod store;
