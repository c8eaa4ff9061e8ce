//! What should exist: the boxes and pools of the config file and those
//! registered through the API (stored as JSON). A stored spec is checked
//! again against what the API refuses (it may predate the check, or a config
//! that allowed it) and parsed like the file's tables; the file wins a name
//! clash. The daemon, the API and the CLI all read specs through here.

use crate::config::{BoxSpec, Config, PoolSpec, parse_box_json, parse_pool_json, refuse_code};
use crate::store::{Store, StoreError};

/// A box registered through the API, from the JSON stored with it; why not,
/// when it is refused or does not parse.
pub fn stored_box(config: &Config, name: &str, json: &str) -> Result<BoxSpec, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    // Checked again here: a box stored before the check existed, or with a
    // config that allowed it then, must not make this daemon run its code.
    refuse_code(config, &value)?;
    parse_box_json(name, &value)
}

/// A pool registered through the API, as [`stored_box`] a box; its demand
/// is asked only where `[api] demand_hosts` allows.
pub fn stored_pool(config: &Config, name: &str, json: &str) -> Result<PoolSpec, String> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    refuse_code(config, &value)?;
    let mut spec = parse_pool_json(name, &value)?;
    if let crate::config::Demand::Http { guarded, .. } = &mut spec.demand {
        *guarded = true;
    }
    Ok(spec)
}

/// The spec of box `name`: the config file's, else the one `stored` through
/// the API; `Ok(None)` when there is neither, `Err` when the stored one is
/// refused or does not parse.
pub fn box_spec(
    config: &Config,
    name: &str,
    stored: Option<&str>,
) -> Result<Option<BoxSpec>, String> {
    match (config.boxes.get(name), stored) {
        (Some(spec), _) => Ok(Some(spec.clone())),
        (None, Some(json)) => stored_box(config, name, json).map(Some),
        (None, None) => Ok(None),
    }
}

/// The pools of the config file and those registered through the API, with
/// where each comes from (`config`, `api`); and the stored pools that are
/// refused or no longer parse, with why.
pub async fn pools(
    config: &Config,
    store: &Store,
) -> Result<(Vec<(PoolSpec, String)>, Vec<(String, String)>), StoreError> {
    let mut pools: Vec<(PoolSpec, String)> = config
        .pools
        .values()
        .map(|p| (p.clone(), "config".to_owned()))
        .collect();
    let mut bad = Vec::new();
    for (name, json) in store.for_owner(&config.owner).pools().await? {
        if config.pools.contains_key(&name) {
            continue;
        }
        match stored_pool(config, &name, &json) {
            Ok(spec) => pools.push((spec, "api".to_owned())),
            Err(m) => bad.push((name, m)),
        }
    }
    Ok((pools, bad))
}
