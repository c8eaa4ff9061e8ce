//! What the daemon saw on its last look at AWS, shared with the API.
//!
//! The dashboard refreshes every 5 s; if each refresh described the
//! instances and spot requests, every open browser tab would spend the
//! account's EC2 request budget, which replacements in a wave need (EC2
//! throttles per account, not per caller). So `/api/boxes` and `/api/pools`
//! read the daemon's last observation instead, and say how old it is.

use super::Observation;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// An observation and when it was made.
pub type Sighting = (SystemTime, Arc<Observation>);

/// A box's replicas in one of its other regions, as the daemon last read
/// them (at most once per `replicate`, and sooner while a copy is under way).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionPoint {
    /// The region.
    pub region: String,
    /// When the data of its newest completed replica was taken (Unix seconds).
    pub taken_at: Option<i64>,
    /// A newer copy is still under way.
    pub copying: bool,
}

/// A box's DNS record as the daemon last left it (settled, healed): for
/// which instance, and whether it points there. The API shows it instead of
/// asking Route 53 (whose API allows five requests a second per account) on
/// every refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSeen {
    /// The instance it was settled for.
    pub instance: spotkeeper_cloud::InstanceId,
    /// The record name.
    pub name: String,
    /// It points at that instance.
    pub matches: bool,
    /// It is marked as the box's.
    pub owned: bool,
}

/// The daemon's last observation and when it was made, for the API; and the
/// boxes' recovery points.
#[derive(Debug, Clone, Default)]
pub struct LastSeen {
    sighting: Arc<RwLock<Option<Sighting>>>,
    recovery: Arc<RwLock<HashMap<String, Vec<RegionPoint>>>>,
    away: Arc<RwLock<HashMap<String, spotkeeper_cloud::Instance>>>,
    dns: Arc<RwLock<HashMap<String, DnsSeen>>>,
}

impl LastSeen {
    /// Keeps `observation`, made at `at`, in place of the last one.
    pub fn set(&self, at: SystemTime, observation: Arc<Observation>) {
        *self.sighting.write().unwrap_or_else(|e| e.into_inner()) = Some((at, observation));
    }

    /// The last observation and when it was made; `None` before the first.
    pub fn get(&self) -> Option<Sighting> {
        self.sighting
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps what box `name`'s replicas are in each other region.
    pub fn set_recovery(&self, name: &str, points: Vec<RegionPoint>) {
        self.recovery
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), points);
    }

    /// Box `name`'s replicas per other region, as last read (none: not
    /// replicated, or not read yet).
    pub fn recovery(&self, name: &str) -> Vec<RegionPoint> {
        self.recovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Box `name` runs in another region on `instance` (`None`: at home).
    pub fn set_away(&self, name: &str, instance: Option<spotkeeper_cloud::Instance>) {
        let mut away = self.away.write().unwrap_or_else(|e| e.into_inner());
        match instance {
            Some(i) => away.insert(name.to_owned(), i),
            None => away.remove(name),
        };
    }

    /// The instance box `name` runs on in another region, if it does.
    pub fn away(&self, name: &str) -> Option<spotkeeper_cloud::Instance> {
        self.away
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// The instance `id` when a box runs on it in another region.
    pub fn away_instance(
        &self,
        id: &spotkeeper_cloud::InstanceId,
    ) -> Option<spotkeeper_cloud::Instance> {
        self.away
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|i| i.id == *id)
            .cloned()
    }

    /// Keeps box `name`'s DNS record as the daemon left it.
    pub fn set_dns(&self, name: &str, seen: DnsSeen) {
        self.dns
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), seen);
    }

    /// Box `name`'s DNS record as the daemon last left it, if it did.
    pub fn dns(&self, name: &str) -> Option<DnsSeen> {
        self.dns
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
}
