//! AWS's spot placement scores for the ranking ([`crate::rank`]), cached in
//! the process per region and set of instance types. AWS limits how many
//! distinct configurations an account asks about in 24 hours (asking one
//! again is allowed), and scores move slowly: an answer is kept an hour, a
//! refusal too, and the ranking then goes by this installation's own
//! interruption record alone — said once per process, not at every launch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use spotkeeper_cloud::Cloud;

/// How long an answer (or a refusal) is kept.
pub const FRESH: Duration = Duration::from_secs(3600);

type Cached = (Instant, Result<BTreeMap<String, u8>, String>);

static CACHE: Mutex<Option<HashMap<String, Cached>>> = Mutex::new(None);
static SAID: AtomicBool = AtomicBool::new(false);

/// The scores per zone for `types` in `cloud`'s region: cached, else asked
/// when `ask` (the warning's fast path does not wait for AWS), else none.
/// The second value, once per process, says the scores were refused.
pub async fn scores(
    cloud: &dyn Cloud,
    types: &[String],
    ask: bool,
) -> (BTreeMap<String, u8>, Option<String>) {
    let mut sorted = types.to_vec();
    sorted.sort();
    let key = format!("{}|{}", cloud.region(), sorted.join(","));
    let cached = lock().as_ref().and_then(|c| c.get(&key).cloned());
    let answer = match cached {
        Some((at, answer)) if at.elapsed() < FRESH => answer,
        _ if !ask => return (BTreeMap::new(), None),
        _ => {
            let answer = cloud
                .placement_scores(types)
                .await
                .map_err(|e| e.to_string());
            lock()
                .get_or_insert_with(HashMap::new)
                .insert(key, (Instant::now(), answer.clone()));
            answer
        }
    };
    match answer {
        Ok(s) => (s, None),
        Err(e) if !SAID.swap(true, Ordering::Relaxed) => (
            BTreeMap::new(),
            Some(format!(
                "Spot placement scores are not available ({e}); choosing by this installation's \
                 own interruption record alone for the next hour"
            )),
        ),
        Err(_) => (BTreeMap::new(), None),
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<HashMap<String, Cached>>> {
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}
