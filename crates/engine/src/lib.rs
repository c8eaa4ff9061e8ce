//! # spotkeeper-engine
//!
//! Everything between the command line and the cloud: the config file, the
//! state store, pure launch planning, readiness checks, per-box locks and the
//! box lifecycle (`up`, `stop`, `list`, prices).

pub mod bootstrap;
pub mod boxes;
pub mod config;
pub mod lock;
pub mod plan;
pub mod ready;
pub mod store;
