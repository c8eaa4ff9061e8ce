//! `spotkeeper serve`: keeps the managed boxes alive.
//!
//! Two tasks. The receiver long-polls the event queue, parses each message,
//! records what it means (an instance is going away, an offering was
//! interrupted), deletes the message and wakes the reconciler. The reconciler
//! re-reads the world on every pass (level-triggered: it never trusts why it
//! was woken), and for each managed box without a live instance launches a
//! replacement through the same code path as `up`, avoiding the doomed
//! instances and the offerings interrupted in the last minutes.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{AwsCloud, Cloud, CloudError, InstanceId, InstanceState, QueueMessage};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::boxes::{self, Avoid, Ctx, Progress, Timing};
use crate::config::Config;
use crate::events::{self, EventKind};
use crate::pools::PoolSpec;
use crate::pools::demand::{DemandReader, LiveDemand};
use crate::pools::pass::{PoolMemory, PoolPass, World};
use crate::pools::plan::OfferingKey;
use crate::store::Store;

/// How long an interrupted (type, zone) offering is avoided: capacity that
/// was just reclaimed rarely comes back within minutes.
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(5 * 60);

/// Instances of a pool that no longer exists are terminated once this old
/// (a launch racing a deletion gets time to be seen as what it is).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(5 * 60);

/// Where events come from.
#[async_trait]
pub trait EventQueue: Send + Sync {
    /// Waits (long-polls) for up to ten messages.
    async fn receive(&self) -> Result<Vec<QueueMessage>, CloudError>;
    /// Deletes a handled message.
    async fn delete(&self, receipt: &str) -> Result<(), CloudError>;
}

/// The SQS queue `setup` made.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    cloud: AwsCloud,
    url: String,
}

impl SqsQueue {
    /// The queue named `name`, or an error saying to run `spotkeeper setup`.
    pub async fn open(cloud: &AwsCloud, name: &str) -> Result<Self, CloudError> {
        let url = cloud.queue_url(name).await?.ok_or_else(|| {
            CloudError::other(
                "GetQueueUrl",
                spotkeeper_cloud::ErrorKind::NotFound,
                format!("queue {name} does not exist: run `spotkeeper setup`"),
            )
        })?;
        Ok(Self {
            cloud: cloud.clone(),
            url,
        })
    }
}

#[async_trait]
impl EventQueue for SqsQueue {
    async fn receive(&self) -> Result<Vec<QueueMessage>, CloudError> {
        // Batches of ten, 20-second waits: few calls when idle, no delay when busy.
        self.cloud.receive_messages(&self.url, 10, 20).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), CloudError> {
        self.cloud.delete_message(&self.url, receipt).await
    }
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    /// Not an event spotkeeper understands (logged, deleted).
    Garbage(String),
    /// An event id seen before.
    Duplicate,
    /// About instances that are not a managed box's.
    NotOurs,
    /// Understood, nothing to do (e.g. rebalance with `on_rebalance = "ignore"`).
    Ignored(String),
    /// Recorded: the reconciler will act.
    Acted(String),
}

/// Logs progress through `tracing` instead of a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Log;

impl Progress for Log {
    fn note(&self, line: &str) {
        tracing::info!("{line}");
    }
    fn start(&self, what: &str) {
        tracing::info!("{what} ...");
    }
    fn finish(&self, outcome: &str) {
        tracing::info!("... {outcome}");
    }
}

/// The daemon's state between passes.
pub struct Daemon<'a> {
    cloud: &'a dyn Cloud,
    store: &'a Store,
    config: &'a Config,
    lock_dir: &'a std::path::Path,
    timing: Timing,
    unavailable: Mutex<HashMap<(String, String), Instant>>,
    wake: std::sync::Arc<Notify>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    warned_at: Mutex<HashMap<String, Instant>>,
    demand: Box<dyn DemandReader>,
    pool_marks: Mutex<HashMap<OfferingKey, Instant>>,
    spot_blocked: Mutex<HashMap<String, Instant>>,
    pool_memory: Mutex<HashMap<String, PoolMemory>>,
}

impl std::fmt::Debug for Daemon<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("owner", &self.config.owner)
            .finish_non_exhaustive()
    }
}

impl<'a> Daemon<'a> {
    /// A daemon over `cloud` and `store` for the boxes of `config`.
    pub fn new(
        cloud: &'a dyn Cloud,
        store: &'a Store,
        config: &'a Config,
        lock_dir: &'a std::path::Path,
    ) -> Self {
        Self {
            cloud,
            store,
            config,
            lock_dir,
            timing: Timing::default(),
            unavailable: Mutex::new(HashMap::new()),
            wake: std::sync::Arc::new(Notify::new()),
            metrics: std::sync::Arc::default(),
            warned_at: Mutex::new(HashMap::new()),
            demand: Box::new(LiveDemand::new(None)),
            pool_marks: Mutex::new(HashMap::new()),
            spot_blocked: Mutex::new(HashMap::new()),
            pool_memory: Mutex::new(HashMap::new()),
        }
    }

    /// Reads pool demand with `reader` (the default reads HTTP only; `serve`
    /// passes one with the AWS handle for SQS sources, tests a fake).
    pub fn with_demand(mut self, reader: Box<dyn DemandReader>) -> Self {
        self.demand = reader;
        self
    }

    /// A handle that wakes the reconciler (the API uses it after a registration).
    pub fn waker(&self) -> std::sync::Arc<Notify> {
        self.wake.clone()
    }

    /// The daemon's metrics (the API serves them).
    pub fn metrics(&self) -> std::sync::Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// Uses other waits (tests).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// What `up` needs, for launching replacements the same way.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            cloud: self.cloud,
            store: self.store,
            owner: &self.config.owner,
            lock_dir: self.lock_dir,
            progress: &Log,
            timing: self.timing,
        }
    }

    fn mark_unavailable(&self, instance_type: &str, zone: &str) {
        let mut u = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        u.insert(
            (instance_type.to_owned(), zone.to_owned()),
            Instant::now() + UNAVAILABLE_FOR,
        );
    }

    /// Offerings still marked unavailable (expired marks are dropped).
    pub fn unavailable(&self) -> HashSet<(String, String)> {
        self.unavailable_at(Instant::now())
    }

    /// Offerings still marked unavailable at `now`.
    pub fn unavailable_at(&self, now: Instant) -> HashSet<(String, String)> {
        let mut u = self.unavailable.lock().unwrap_or_else(|e| e.into_inner());
        u.retain(|_, until| *until > now);
        u.keys().cloned().collect()
    }

    async fn record(&self, box_name: Option<&str>, kind: &str, message: &str) {
        tracing::info!(box_name, kind, "{message}");
        if let Err(e) = self
            .store
            .record_event(&self.config.owner, box_name, kind, message)
            .await
        {
            tracing::warn!("cannot record an event in the state file: {e}");
        }
    }

    /// Handles one message body. Errors are AWS or state-file failures: the
    /// message is then kept for another try.
    pub async fn handle(&self, body: &str) -> Result<Handled, crate::boxes::BoxError> {
        let event = match events::parse(body) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.event("garbage");
                self.record(None, "garbage", &format!("dropped a message: {e}"))
                    .await;
                return Ok(Handled::Garbage(e.to_string()));
            }
        };
        let first_instance = event.kind.instances().first().map(|i| i.to_string());
        // Checked now, recorded once acted on: a crash in between re-acts on
        // the redelivered message, and acting (doom, mark) is idempotent.
        if self.store.seen(&event.id).await? {
            self.metrics.event("duplicate");
            return Ok(Handled::Duplicate);
        }
        let outcome = self.act(&event).await?;
        self.store
            .first_delivery(&event.id, event.kind.name(), first_instance.as_deref())
            .await?;
        Ok(outcome)
    }

    async fn act(&self, event: &events::Event) -> Result<Handled, crate::boxes::BoxError> {
        let managed: HashMap<String, Option<String>> = self
            .store
            .managed_boxes(&self.config.owner)
            .await?
            .into_iter()
            .map(|b| (b.name, b.spec))
            .collect();
        let (mut acted, mut ignored) = (Vec::new(), Vec::new());
        for id in event.kind.instances() {
            // Re-read the instance: events arrive late, twice, or out of order.
            let Some(instance) = self.cloud.instance(id).await? else {
                continue;
            };
            if instance.tag(tags::OWNER) != Some(self.config.owner.as_str()) {
                continue;
            }
            if let Some(pool) = instance.tag(tags::POOL) {
                // The pool pass replaces it: it is short once the instance
                // stops counting (doomed) or is gone.
                if let EventKind::SpotInterruption { .. } | EventKind::ScheduledChange { .. } =
                    &event.kind
                {
                    self.store
                        .doom(
                            &self.config.owner,
                            &format!("pool:{pool}"),
                            id.as_str(),
                            event.kind.name(),
                        )
                        .await?;
                    if let Some(zone) = &instance.zone {
                        self.mark_unavailable(&instance.instance_type, zone);
                    }
                } else if !matches!(event.kind, EventKind::StateChange { .. }) {
                    ignored.push(format!(
                        "{} for {id} (pool {pool}): nothing to do",
                        event.kind.name()
                    ));
                    continue;
                }
                let what = format!(
                    "{} for {id} of pool {pool}: the pool pass refills it",
                    event.kind.name()
                );
                if let Err(e) = self
                    .store
                    .record_pool_event(&self.config.owner, pool, event.kind.name(), &what)
                    .await
                {
                    tracing::warn!("cannot record a pool event: {e}");
                }
                acted.push(what);
                continue;
            }
            let Some(box_name) = instance
                .tag(tags::BOX)
                .filter(|b| managed.contains_key(*b))
                .map(str::to_owned)
            else {
                continue;
            };
            // The box's policy: from the config file, else as registered
            // through the API.
            let replace_on_rebalance = match self.config.boxes.get(&box_name) {
                Some(s) => s.replace_on_rebalance,
                None => managed
                    .get(&box_name)
                    .and_then(Option::as_deref)
                    .and_then(|json| stored_spec(&box_name, json).ok())
                    .is_some_and(|s| s.replace_on_rebalance),
            };
            let doom = match &event.kind {
                EventKind::SpotInterruption { .. } | EventKind::ScheduledChange { .. } => true,
                EventKind::Rebalance { .. } => replace_on_rebalance,
                EventKind::StateChange { state, .. } => {
                    !matches!(state, InstanceState::Pending | InstanceState::Running)
                }
            };
            if !doom {
                ignored.push(format!(
                    "{} for {id} ({box_name}): nothing to do",
                    event.kind.name()
                ));
                continue;
            }
            self.store
                .doom(
                    &self.config.owner,
                    &box_name,
                    id.as_str(),
                    event.kind.name(),
                )
                .await?;
            if matches!(
                event.kind,
                EventKind::SpotInterruption { .. } | EventKind::Rebalance { .. }
            ) && let Some(zone) = &instance.zone
            {
                self.mark_unavailable(&instance.instance_type, zone);
            }
            self.warned_at
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(box_name.clone())
                .or_insert_with(Instant::now);
            let what = format!(
                "{} for {id} of box {box_name}: replacing it",
                event.kind.name()
            );
            self.record(Some(&box_name), event.kind.name(), &what).await;
            acted.push(what);
        }
        if acted.is_empty() && ignored.is_empty() {
            self.metrics.event("not-ours");
            return Ok(Handled::NotOurs);
        }
        if acted.is_empty() {
            self.metrics.event("ignored");
            return Ok(Handled::Ignored(ignored.join("; ")));
        }
        self.wake.notify_one();
        self.metrics.event(event.kind.name());
        Ok(Handled::Acted(acted.join("; ")))
    }

    /// One reconcile pass: every managed box without a live instance gets
    /// one. Returns what it launched. Any failed describe aborts the pass:
    /// it never plans on a partial view.
    pub async fn reconcile(&self) -> Result<Vec<String>, crate::boxes::BoxError> {
        let owner = &self.config.owner;
        let doomed: HashSet<InstanceId> = self
            .store
            .doomed(owner)
            .await?
            .into_iter()
            .map(InstanceId::new)
            .collect();
        let all = self.cloud.instances(&boxes::owner_filter(owner)).await?;
        let requests = self
            .cloud
            .spot_requests(&boxes::owner_filter(owner))
            .await?;
        if let Err(e) = self.store.record_seen(owner, &all).await {
            tracing::warn!("cannot record the instances seen in the state file: {e}");
        }
        let mut launched = Vec::new();
        for managed in self.store.managed_boxes(owner).await? {
            let stored;
            let spec = match (self.config.boxes.get(&managed.name), &managed.spec) {
                (Some(s), _) => s,
                (None, Some(json)) => match stored_spec(&managed.name, json) {
                    Ok(s) => {
                        stored = s;
                        &stored
                    }
                    Err(m) => {
                        self.record(
                            Some(&managed.name),
                            "bad-box",
                            &format!("stored box does not parse: {m}"),
                        )
                        .await;
                        continue;
                    }
                },
                (None, None) => {
                    self.record(
                        Some(&managed.name),
                        "unknown-box",
                        "managed, but not in the config file: left alone",
                    )
                    .await;
                    continue;
                }
            };
            let mine: Vec<_> = all
                .iter()
                .filter(|i| i.tag(tags::BOX) == Some(managed.name.as_str()))
                .collect();
            // The oldest running one, as `up` keeps it when it finds two.
            let healthy = mine
                .iter()
                .filter(|i| {
                    i.state == InstanceState::Running
                        && !doomed.contains(&i.id)
                        && i.tag(tags::STOPPED).is_none()
                })
                .min_by(|a, b| {
                    a.launched_at
                        .cmp(&b.launched_at)
                        .then(a.id.as_str().cmp(b.id.as_str()))
                });
            if let Some(instance) = healthy {
                launched.extend(
                    self.reduce(&managed.name, &mine, &doomed, &requests, instance)
                        .await?,
                );
                // Level-triggered healing: a crash after the launch may have
                // left the volume unattached or the name pointing elsewhere.
                if let Err(e) = self.heal(spec, instance).await {
                    self.record(Some(&managed.name), "heal-failed", &e.to_string())
                        .await;
                }
                // On on-demand for want of spot: back to spot at the next chance.
                if instance.market == spotkeeper_cloud::Market::OnDemand
                    && spec.market == spotkeeper_cloud::Market::Spot
                    && spec.fallback_on_demand
                {
                    let mut avoid = Avoid {
                        instances: doomed.clone(),
                        offerings: self.unavailable(),
                    };
                    avoid.instances.insert(instance.id.clone());
                    let spot_only = crate::config::BoxSpec {
                        fallback_on_demand: false,
                        ..spec.clone()
                    };
                    let ctx = self.ctx();
                    if let Ok(out) = boxes::up_avoiding(&ctx, &spot_only, &avoid).await {
                        if self
                            .cloud
                            .instance(&instance.id)
                            .await?
                            .is_some_and(|i| i.state.is_live())
                        {
                            self.cloud
                                .terminate(std::slice::from_ref(&instance.id))
                                .await?;
                        }
                        let what = format!(
                            "back on spot: {} replaced on-demand {}",
                            out.instance.id, instance.id
                        );
                        self.record(Some(&managed.name), "back-to-spot", &what)
                            .await;
                        launched.push(what);
                        continue;
                    }
                }
                // Scheduled images (`images.every`) of healthy boxes.
                match crate::images::refresh_if_due(
                    self.cloud,
                    owner,
                    spec,
                    instance,
                    std::time::SystemTime::now(),
                )
                .await
                {
                    Ok(Some((image, pruned))) => {
                        self.record(
                            Some(&managed.name),
                            "image",
                            &format!("made image {} (pruned {pruned:?})", image.id),
                        )
                        .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.record(Some(&managed.name), "image-failed", &e.to_string())
                            .await
                    }
                }
                continue;
            }
            if mine.iter().any(|i| {
                i.state == InstanceState::Pending
                    && !doomed.contains(&i.id)
                    && i.tag(tags::STOPPED).is_none()
            }) {
                continue; // coming up
            }
            let avoid = Avoid {
                instances: doomed.clone(),
                offerings: self.unavailable(),
            };
            let ctx = self.ctx();
            match boxes::up_avoiding(&ctx, spec, &avoid).await {
                Ok(out) => {
                    let what = format!(
                        "replacement {} ({} in {}) is up",
                        out.instance.id,
                        out.instance.instance_type,
                        out.instance.zone.as_deref().unwrap_or("?")
                    );
                    self.metrics.replacements.inc();
                    let warned = self
                        .warned_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&managed.name);
                    if let Some(at) = warned {
                        self.metrics
                            .warning_to_running
                            .observe(at.elapsed().as_secs_f64());
                    }
                    self.record(Some(&managed.name), "replaced", &what).await;
                    // The replaced instances (rebalance: still running) go now.
                    let old: Vec<InstanceId> = mine
                        .iter()
                        .filter(|i| doomed.contains(&i.id) && i.state.is_live())
                        .map(|i| i.id.clone())
                        .collect();
                    if !old.is_empty() {
                        self.cloud.terminate(&old).await?;
                    }
                    launched.push(what);
                }
                Err(e) => {
                    self.metrics.launch_failure(failure_reason(&e));
                    self.record(Some(&managed.name), "replace-failed", &e.to_string())
                        .await
                }
            }
        }
        launched.extend(self.reconcile_pools(all, requests, doomed).await?);
        Ok(launched)
    }

    /// The pools of the config file and those registered through the API.
    /// A stored pool that no longer parses is reported and left alone.
    pub async fn pools(&self) -> Result<Vec<PoolSpec>, crate::boxes::BoxError> {
        let (pools, bad) = crate::pools::view::all_pools(self.config, self.store).await?;
        for (name, why) in bad {
            self.record(
                None,
                "bad-pool",
                &format!("stored pool {name} does not parse: {why}"),
            )
            .await;
        }
        Ok(pools.into_iter().map(|(p, _)| p).collect())
    }

    /// One pass over every pool, on one observation of the world.
    async fn reconcile_pools(
        &self,
        instances: Vec<spotkeeper_cloud::Instance>,
        requests: Vec<spotkeeper_cloud::SpotRequest>,
        doomed: HashSet<InstanceId>,
    ) -> Result<Vec<String>, crate::boxes::BoxError> {
        let pools = self.pools().await?;
        if pools.is_empty() && !instances.iter().any(|i| i.tag(tags::POOL).is_some()) {
            return Ok(Vec::new());
        }
        let owner = &self.config.owner;
        let zones = if pools
            .iter()
            .all(|p| p.zones.is_some() || !p.subnets.is_empty())
        {
            Vec::new()
        } else {
            self.cloud.zones().await?
        };
        // One price read for every pool without subnets: calls grow with
        // pages, not with pools.
        let mut types: Vec<String> = Vec::new();
        let mut price_zones: Vec<String> = Vec::new();
        for p in pools.iter().filter(|p| p.subnets.is_empty()) {
            types.extend(p.types.iter().map(|t| t.instance_type.clone()));
            price_zones.extend(p.zones.clone().unwrap_or_else(|| zones.clone()));
        }
        types.sort();
        types.dedup();
        price_zones.sort();
        price_zones.dedup();
        let prices = if types.is_empty() || price_zones.is_empty() {
            None
        } else {
            Some(self.cloud.spot_prices(&types, &price_zones).await?)
        };
        let world = World {
            requests,
            zones,
            instances,
            doomed,
            prices,
        };
        let pass = PoolPass {
            cloud: self.cloud,
            store: self.store,
            owner,
            demand: self.demand.as_ref(),
        };
        let mut done = self.collect_orphans(&pools, &world).await?;
        for spec in &pools {
            match self.pool_pass(&pass, spec, &world).await {
                Ok(Some(what)) => done.push(what),
                Ok(None) => {}
                Err(e) => {
                    self.metrics
                        .pools
                        .launch_failures
                        .get_or_create(&crate::metrics::PoolKindLabel {
                            pool: spec.name.clone(),
                            kind: failure_reason(&e).into(),
                        })
                        .inc();
                    if let Err(e) = self
                        .store
                        .record_pool_event(owner, &spec.name, "pass-failed", &e.to_string())
                        .await
                    {
                        tracing::warn!("cannot record a pool event: {e}");
                    }
                    tracing::warn!(pool = %spec.name, "pool pass failed: {e}");
                }
            }
        }
        Ok(done)
    }

    /// A box with a healthy instance needs nothing else: a second live
    /// instance (a race `up`'s own re-check did not settle, a crash between
    /// launch and re-check) is terminated once older than [`ORPHAN_GRACE`],
    /// `healthy` (the oldest running) kept, as `up` does; an open spot request of the box would
    /// only make another, and is cancelled.
    async fn reduce(
        &self,
        box_name: &str,
        mine: &[&spotkeeper_cloud::Instance],
        doomed: &HashSet<InstanceId>,
        requests: &[spotkeeper_cloud::SpotRequest],
        healthy: &spotkeeper_cloud::Instance,
    ) -> Result<Vec<String>, crate::boxes::BoxError> {
        let mut done = Vec::new();
        let keep = healthy.id.clone();
        let live: Vec<&spotkeeper_cloud::Instance> = mine
            .iter()
            .copied()
            .filter(|i| {
                i.state.is_live() && !doomed.contains(&i.id) && i.tag(tags::STOPPED).is_none()
            })
            .collect();
        let now = std::time::SystemTime::now();
        let extra: Vec<InstanceId> = live
            .iter()
            .filter(|i| i.id != keep)
            .filter(|i| {
                i.launched_at
                    .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= ORPHAN_GRACE)
            })
            .map(|i| i.id.clone())
            .collect();
        if !extra.is_empty() {
            self.cloud.terminate(&extra).await?;
            let ids: Vec<&str> = extra.iter().map(InstanceId::as_str).collect();
            let what = format!(
                "duplicate instances {} terminated; {keep} kept",
                ids.join(" "),
            );
            self.record(Some(box_name), "duplicate", &what).await;
            done.push(what);
        }
        let stale: Vec<spotkeeper_cloud::SpotRequestId> = requests
            .iter()
            .filter(|r| {
                r.tag(tags::BOX) == Some(box_name)
                    && r.state == spotkeeper_cloud::SpotRequestState::Open
                    && r.instance_id.is_none()
            })
            .map(|r| r.id.clone())
            .collect();
        if !stale.is_empty() {
            self.cloud.cancel_spot_requests(&stale).await?;
            let ids: Vec<&str> = stale.iter().map(|r| r.as_str()).collect();
            let what = format!(
                "open spot requests {} cancelled: the box already runs {}",
                ids.join(" "),
                healthy.id
            );
            self.record(Some(box_name), "stale-request", &what).await;
            done.push(what);
        }
        Ok(done)
    }

    /// Instances and open spot requests of pools that no longer exist (a pool
    /// deleted, or removed from the config file) are taken down, instances
    /// only once older than [`ORPHAN_GRACE`].
    async fn collect_orphans(
        &self,
        pools: &[PoolSpec],
        world: &World,
    ) -> Result<Vec<String>, crate::boxes::BoxError> {
        let known: HashSet<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let orphan = |tags: &std::collections::BTreeMap<String, String>| {
            tags.get(tags::POOL)
                .is_some_and(|p| !known.contains(p.as_str()))
        };
        let now = std::time::SystemTime::now();
        let instances: Vec<InstanceId> = world
            .instances
            .iter()
            .filter(|i| orphan(&i.tags) && i.state.is_live())
            .filter(|i| {
                i.launched_at
                    .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= ORPHAN_GRACE)
            })
            .map(|i| i.id.clone())
            .collect();
        let requests: Vec<spotkeeper_cloud::SpotRequestId> = world
            .requests
            .iter()
            .filter(|r| orphan(&r.tags) && r.state == spotkeeper_cloud::SpotRequestState::Open)
            .map(|r| r.id.clone())
            .collect();
        let mut done = Vec::new();
        if !requests.is_empty() {
            self.cloud.cancel_spot_requests(&requests).await?;
            done.push(format!(
                "cancelled {} open spot requests of pools that no longer exist",
                requests.len()
            ));
        }
        if !instances.is_empty() {
            self.cloud.terminate(&instances).await?;
            let ids: Vec<&str> = instances.iter().map(InstanceId::as_str).collect();
            done.push(format!(
                "terminated {} of pools that no longer exist",
                ids.join(" ")
            ));
        }
        for d in &done {
            self.record(None, "orphans", d).await;
        }
        Ok(done)
    }

    /// Offerings a pool should not use now: interrupted (box marks, spot) and
    /// refused (pool marks).
    fn pool_unavailable(&self) -> HashSet<OfferingKey> {
        let now = Instant::now();
        let mut set: HashSet<OfferingKey> = self
            .unavailable_at(now)
            .into_iter()
            .map(|(t, z)| (t, z, spotkeeper_cloud::Market::Spot))
            .collect();
        let mut marks = self.pool_marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.retain(|_, until| *until > now);
        set.extend(marks.keys().cloned());
        set
    }

    async fn pool_pass(
        &self,
        pass: &PoolPass<'_>,
        spec: &PoolSpec,
        world: &World,
    ) -> Result<Option<String>, crate::boxes::BoxError> {
        let owner = &self.config.owner;
        let to_time = |s: i64| std::time::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        let known = self
            .pool_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&spec.name)
            .cloned();
        let memory = match known {
            Some(m) => m,
            // After a restart: what the last pass saved.
            None => self
                .store
                .pool_status(owner, Some(&spec.name))
                .await?
                .into_iter()
                .next()
                .map(|s| PoolMemory {
                    last_desired: s.last_desired.map(|d| d.max(0) as u32),
                    surplus_since: s.surplus_since.map(to_time),
                })
                .unwrap_or_default(),
        };
        let spot_blocked = {
            let mut b = self.spot_blocked.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            b.retain(|_, until| *until > now);
            b.contains_key(&spec.name)
        };
        let unavailable = self.pool_unavailable();
        let now = std::time::SystemTime::now();
        let out = pass
            .run(spec, world, &unavailable, spot_blocked, &memory, now)
            .await?;
        {
            let until = Instant::now() + UNAVAILABLE_FOR;
            let mut marks = self.pool_marks.lock().unwrap_or_else(|e| e.into_inner());
            for key in &out.marks {
                marks.insert(key.clone(), until);
            }
            if out.block_spot {
                self.spot_blocked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(spec.name.clone(), until);
            }
        }
        let memory = PoolMemory {
            last_desired: if out.plan.held.is_none() {
                Some(out.plan.desired)
            } else {
                memory.last_desired
            },
            surplus_since: out.plan.surplus_since,
        };
        self.pool_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), memory.clone());
        let status = crate::store::PoolStatus {
            pool: spec.name.clone(),
            at: crate::store::unix_seconds(now),
            desired: i64::from(out.plan.desired),
            last_desired: memory.last_desired.map(i64::from),
            surplus_since: memory.surplus_since.map(crate::store::unix_seconds),
            plan: serde_json::to_string(&serde_json::json!({
                "plan": out.plan,
                "failures": out.failures,
                "spot_blocked": spot_blocked || out.block_spot,
            }))
            .unwrap_or_default(),
        };
        self.store.save_pool_status(owner, &status).await?;
        // Metrics.
        let m = &self.metrics.pools;
        let label = crate::metrics::PoolLabel {
            pool: spec.name.clone(),
        };
        let kind = |k: &str| crate::metrics::PoolKindLabel {
            pool: spec.name.clone(),
            kind: k.to_owned(),
        };
        m.desired
            .get_or_create(&label)
            .set(i64::from(out.plan.desired));
        m.current
            .get_or_create(&kind("spot"))
            .set(i64::from(out.units_by_market.0));
        m.current
            .get_or_create(&kind("on-demand"))
            .set(i64::from(out.units_by_market.1));
        m.current
            .get_or_create(&kind("requested"))
            .set(i64::from(out.plan.pending));
        for i in &out.launched {
            m.launches.get_or_create(&kind(i.market.as_str())).inc();
        }
        for f in &out.failures {
            m.launch_failures.get_or_create(&kind(f.reason)).inc();
        }
        if out.plan.held.is_some() {
            m.demand_failures.get_or_create(&label).inc();
        }
        if let Some(p) = out.price_per_unit {
            m.price_per_unit.get_or_create(&label).set(p);
        }
        let changed = !out.launched.is_empty() || out.terminated > 0 || out.cancelled > 0;
        Ok(changed.then(|| {
            format!(
                "pool {}: desired {}, launched {}, terminated {}, cancelled {}",
                spec.name,
                out.plan.desired,
                out.launched.len(),
                out.terminated,
                out.cancelled
            )
        }))
    }

    async fn heal(
        &self,
        spec: &crate::config::BoxSpec,
        instance: &spotkeeper_cloud::Instance,
    ) -> Result<(), crate::boxes::BoxError> {
        for note in
            crate::persist::ensure_attached(self.cloud, &self.config.owner, spec, instance).await?
        {
            self.record(Some(&spec.name), "healed", &note).await;
        }
        if let Some(status) = crate::dns::status(self.cloud, spec, Some(instance)).await?
            && !status.matches
            && status.instance_address.is_some()
        {
            let dns = spec.dns.as_ref().expect("status implies dns");
            let address = crate::dns::point(self.cloud, dns, instance).await?;
            self.record(
                Some(&spec.name),
                "healed",
                &format!("DNS {} → {address}", dns.name),
            )
            .await;
        }
        Ok(())
    }

    /// Runs until `shutdown` flips: a pass at start (boxes lost while the
    /// daemon was down), then one per interval and one per event.
    pub async fn run(&self, queue: &dyn EventQueue, mut shutdown: watch::Receiver<bool>) {
        let mut stop = shutdown.clone();
        let receiver = async move {
            loop {
                let batch = tokio::select! {
                    _ = stop.changed() => break,
                    b = queue.receive() => b,
                };
                let messages = match batch {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!("receiving events failed: {e}");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        continue;
                    }
                };
                for m in messages {
                    if let Some(sent) = m.sent_at_ms {
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        self.metrics
                            .queue_lag_seconds
                            .set(now_ms.saturating_sub(sent) as f64 / 1000.0);
                    }
                    match self.handle(&m.body).await {
                        Ok(outcome) => {
                            tracing::info!(message = %m.id, "{outcome:?}");
                            if let Err(e) = queue.delete(&m.receipt).await {
                                tracing::warn!("deleting message {} failed: {e}", m.id);
                            }
                        }
                        // Kept: it comes back after the visibility timeout.
                        Err(e) => {
                            tracing::warn!("handling message {} failed, will retry: {e}", m.id)
                        }
                    }
                }
                if *stop.borrow() {
                    break;
                }
            }
        };
        let reconciler = async {
            loop {
                match self.reconcile().await {
                    Ok(done) => done.iter().for_each(|d| tracing::info!("{d}")),
                    Err(e) => tracing::warn!("reconcile pass failed: {e}"),
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(self.config.interval) => {}
                }
                if *shutdown.borrow() {
                    break;
                }
            }
        };
        tokio::join!(receiver, reconciler);
    }
}

/// A box registered through the API, from the JSON stored with it.
fn stored_spec(name: &str, json: &str) -> Result<crate::config::BoxSpec, String> {
    serde_json::from_str(json)
        .map_err(|e| e.to_string())
        .and_then(|v| crate::config::parse_box_json(name, &v))
}

/// A short reason for the launch-failure metric.
fn failure_reason(e: &crate::boxes::BoxError) -> &'static str {
    use crate::boxes::BoxError;
    match e {
        BoxError::Cloud(c) => c.kind.as_str(),
        BoxError::NoOffering(_) => "no-offering-under-ceiling",
        BoxError::NoCapacity { .. } => "insufficient-capacity",
        BoxError::NotReady { .. } => "not-ready",
        BoxError::Timeout { .. } => "timeout",
        BoxError::EndedEarly { .. } => "ended-early",
        _ => "other",
    }
}
