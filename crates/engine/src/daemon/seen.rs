//! What the daemon saw on its last look at AWS, shared with the API.
//!
//! The dashboard refreshes every 5 s; if each refresh described the
//! instances and spot requests, every open browser tab would spend the
//! account's EC2 request budget, which replacements in a wave need (EC2
//! throttles per account, not per caller). So `/api/boxes` and `/api/pools`
//! read the daemon's last observation instead, and say how old it is.

use super::Observation;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// An observation and when it was made.
pub type Sighting = (SystemTime, Arc<Observation>);

/// The daemon's last observation and when it was made, for the API.
#[derive(Debug, Clone, Default)]
pub struct LastSeen(Arc<RwLock<Option<Sighting>>>);

impl LastSeen {
    /// Keeps `observation`, made at `at`, in place of the last one.
    pub fn set(&self, at: SystemTime, observation: Arc<Observation>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some((at, observation));
    }

    /// The last observation and when it was made; `None` before the first.
    pub fn get(&self) -> Option<Sighting> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
