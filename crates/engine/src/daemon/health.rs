//! Whether the daemon reaches AWS: what `/healthz` answers (`starting`,
//! `ok`, or `degraded` with the reason, HTTP 503 unless ok, so a load
//! balancer or a supervisor sees it) and the `spotkeeper_aws_reachable`
//! gauge. A daemon that cannot reach AWS keeps its API up and says why,
//! instead of exiting into a crash loop.

use std::sync::{Arc, Mutex};

/// The daemon's health.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Health {
    /// No pass has finished yet, and nothing failed.
    #[default]
    Starting,
    /// The last pass reached AWS.
    Ok,
    /// The daemon cannot work: why (the event queue or a pass failed).
    Degraded(String),
}

impl Health {
    /// `starting`, `ok` or `degraded`.
    pub fn status(&self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Ok => "ok",
            Health::Degraded(_) => "degraded",
        }
    }
}

/// The daemon's health, shared with the API.
#[derive(Debug, Clone, Default)]
pub struct HealthState(Arc<Mutex<Health>>);

impl HealthState {
    /// What it is now.
    pub fn get(&self) -> Health {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sets it; returns what it was.
    pub fn set(&self, health: Health) -> Health {
        std::mem::replace(
            &mut *self.0.lock().unwrap_or_else(|e| e.into_inner()),
            health,
        )
    }
}
