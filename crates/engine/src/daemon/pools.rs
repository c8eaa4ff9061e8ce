//! Pool reconciliation: every pool's pass runs as its own task on one
//! shared observation (instances, requests, prices read once for all), so a
//! slow demand source or a slow launch holds that pool only; orphans of
//! pools that no longer exist are collected in the pass.

use spotkeeper_cloud::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use spotkeeper_cloud::InstanceId;
use spotkeeper_cloud::model::tags;
use tokio::time::Instant;

use super::tasks::{Done, Job, Subject, TaskError, TaskResult, Work};
use super::{Daemon, ORPHAN_GRACE, Observation, UNAVAILABLE_FOR};
use crate::boxes::BoxError;
use crate::event_kind::EventKind;
use crate::pools::PoolSpec;
use crate::pools::pass::{Outcome, PoolMemory, PoolPass, World};
use crate::pools::plan::OfferingKey;

impl Daemon<'_> {
    /// The offerings this owner saw interrupted over and over in the last
    /// 30 days: pools weighing risk launch in them last. Unreadable: none
    /// (said in the log; the pass goes on by price).
    async fn risky_offerings(&self) -> std::collections::HashSet<OfferingKey> {
        let now = crate::store::unix_now();
        match crate::cost::offering_history(
            self.store,
            &self.config.owner,
            now - crate::cost::HISTORY,
            now,
        )
        .await
        {
            Ok(history) => history
                .into_iter()
                .filter(|(_, (hours, n))| crate::rank::risky_record(*hours, *n))
                .map(|(offering, _)| offering)
                .collect(),
            Err(e) => {
                tracing::warn!("cannot read the interruption record: {e}");
                Default::default()
            }
        }
    }
}

impl Daemon<'_> {
    /// The pools of the config file and those registered through the API.
    /// A stored pool that no longer parses is reported and left alone.
    pub async fn pools(&self) -> Result<Vec<PoolSpec>, BoxError> {
        Ok(self.pools_and_unreadable().await?.0)
    }

    /// The pools, and the names of stored pools that do not parse (or are
    /// refused): those are unknown, and their instances are left alone.
    pub(super) async fn pools_and_unreadable(
        &self,
    ) -> Result<(Vec<PoolSpec>, HashSet<String>), BoxError> {
        let (pools, bad) = crate::desired::pools(self.config, self.store).await?;
        let mut unreadable = HashSet::new();
        for (name, why) in bad {
            let what =
                format!("stored pool {name} does not parse: {why}; its instances are left alone");
            self.record_change(
                &format!("bad-pool:{name}"),
                &why,
                None,
                EventKind::BadPool,
                &what,
            )
            .await;
            unreadable.insert(name);
        }
        self.metrics
            .left_alone("unreadable-pool")
            .set(unreadable.len() as i64);
        Ok((pools.into_iter().map(|(p, _)| p).collect(), unreadable))
    }

    /// Records this daemon's config (its fingerprint, the subjects it
    /// names, when its file was written), once.
    pub(super) async fn record_config(&self, now: i64) -> Result<i64, BoxError> {
        if let Some(generation) = self.lock_memory().config_generation {
            return Ok(generation);
        }
        let written = self.config.written_at.map_or(0, |t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        });
        let generation = self
            .owned()
            .record_config(
                &self.config.fingerprint,
                &self.config_subjects(),
                written,
                now,
            )
            .await?;
        self.lock_memory().config_generation = Some(generation);
        Ok(generation)
    }

    /// The lease subjects this daemon's config file names.
    pub(super) fn config_subjects(&self) -> Vec<String> {
        let boxes = self
            .config
            .boxes
            .keys()
            .map(|b| Subject::Box(b.clone()).to_string());
        let pools = self
            .config
            .pools
            .keys()
            .map(|p| Subject::Pool(p.clone()).to_string());
        boxes.chain(pools).collect()
    }

    /// The configs of the live daemons (this one's included once it said
    /// it is alive).
    pub(super) async fn live_configs(&self) -> Result<Vec<crate::store::LiveConfig>, BoxError> {
        let since = self.store.clock_ms().await? + self.clock.offset_ms()
            - self.config.lease.as_millis() as i64;
        Ok(self.owned().live_configs(since).await?)
    }

    /// Whether a newer config than this daemon's was recorded (a rollout
    /// under way, or this daemon started from a stale copy): then it
    /// deletes nothing its own config lacks, and says so once. It catches
    /// up when its file is brought up to date (or written anew: see
    /// [`crate::store::OwnerStore::record_config`]).
    pub(super) async fn config_behind(&self) -> Result<bool, BoxError> {
        let Some(mine) = self.lock_memory().config_generation else {
            return Ok(false);
        };
        match self.owned().newest_config().await? {
            Some((fingerprint, newest)) if newest > mine => {
                let what = format!(
                    "daemon {} runs an older config (generation {mine}) than the newest one recorded \
                     (generation {newest}, {}): it deletes nothing its config lacks until its config \
                     file is brought up to date",
                    self.id,
                    &fingerprint[..12.min(fingerprint.len())]
                );
                self.record_change(
                    EventKind::ConfigBehind.as_str(),
                    &fingerprint,
                    None,
                    EventKind::ConfigBehind,
                    &what,
                )
                .await;
                Ok(true)
            }
            _ => {
                self.state_ended(EventKind::ConfigBehind.as_str());
                Ok(false)
            }
        }
    }

    /// A pool gone from the config file is deleted (positive evidence,
    /// recorded) once no live daemon's config has it, and only by a daemon
    /// not behind on its config; one never seen in a config proves nothing.
    async fn deleted_from_config(
        &self,
        pools: &[PoolSpec],
        unreadable: &HashSet<String>,
    ) -> Result<(), BoxError> {
        if self.config_behind().await? {
            return Ok(());
        }
        let mut wanted: std::collections::BTreeSet<String> = self
            .live_configs()
            .await?
            .into_iter()
            .flat_map(|c| c.subjects)
            .filter_map(|s| match s.parse::<Subject>() {
                Ok(Subject::Pool(name)) => Some(name),
                _ => None,
            })
            .collect();
        wanted.extend(self.config.pools.keys().cloned());
        let wanted: Vec<String> = wanted.into_iter().collect();
        for gone in self.owned().config_pools(&wanted).await? {
            if !pools.iter().any(|p| p.name == gone) && !unreadable.contains(&gone) {
                self.owned().pool_deleted(&gone, "config").await?;
            }
        }
        Ok(())
    }

    /// Plans every pool on `obs` whose lease this daemon holds: each pool's
    /// pass is a job for the task runner. Orphans are collected now, by the
    /// holder of the `fleet` lease (`fleet`).
    pub(super) async fn reconcile_pools(
        &self,
        obs: &Observation,
        pools: Vec<PoolSpec>,
        unreadable: HashSet<String>,
        fleet: bool,
    ) -> Result<(Vec<String>, Vec<Job>), BoxError> {
        if fleet {
            self.deleted_from_config(&pools, &unreadable).await?;
        }
        let known = pools.clone();
        let pools: Vec<PoolSpec> = pools
            .into_iter()
            .filter(|p| self.holds(&Subject::Pool(p.name.clone())))
            .collect();
        self.metrics
            .pools
            .keep_only(&pools.iter().map(|p| p.name.as_str()).collect());
        if pools.is_empty() && !(fleet && obs.instances.iter().any(|i| i.tag(tags::POOL).is_some()))
        {
            return Ok((Vec::new(), Vec::new()));
        }
        let zones = if pools
            .iter()
            .all(|p| p.launch.zones.is_some() || !p.subnets.is_empty())
        {
            Vec::new()
        } else {
            self.region_zones().await?
        };
        let prices = self.pool_prices(&pools, &zones).await?;
        let world = Arc::new(World {
            requests: obs.requests.clone(),
            zones,
            instances: obs.instances.clone(),
            doomed: obs.doomed.clone(),
            prices,
            index: Default::default(),
            risky: self.risky_offerings().await,
        });
        let done = if fleet {
            let orphans = self.collect_orphans(&known, &unreadable, &world);
            self.fenced(&Subject::Fleet, orphans).await?
        } else {
            Vec::new()
        };
        let jobs = pools
            .into_iter()
            // A pool whose passes fail waits out its backoff.
            .filter(|spec| !self.backing_off(&Subject::Pool(spec.name.clone())))
            .map(|spec| {
                let subject = Subject::Pool(spec.name.clone());
                Job {
                    epoch: Some(obs.epoch(&subject)),
                    subject,
                    work: Work::Pool {
                        spec,
                        world: world.clone(),
                    },
                }
            })
            .collect();
        Ok((done, jobs))
    }

    /// One price read for every pool without subnets (calls grow with
    /// pages, not with pools); `None` when no pool reads prices here.
    async fn pool_prices(
        &self,
        pools: &[PoolSpec],
        zones: &[String],
    ) -> Result<Option<Vec<spotkeeper_cloud::SpotPrice>>, BoxError> {
        let mut types: Vec<String> = Vec::new();
        let mut price_zones: Vec<String> = Vec::new();
        for p in pools.iter().filter(|p| p.subnets.is_empty()) {
            types.extend(p.types.iter().map(|t| t.instance_type.clone()));
            price_zones.extend(p.launch.zones.clone().unwrap_or_else(|| zones.to_vec()));
        }
        types.sort();
        types.dedup();
        price_zones.sort();
        price_zones.dedup();
        if types.is_empty() || price_zones.is_empty() {
            return Ok(None);
        }
        let prices = self.cloud.spot_prices(&types, &price_zones).await?;
        self.sample_prices(&prices).await;
        Ok(Some(prices))
    }

    /// One pool's pass (a task); the runner books a failure (said once per
    /// reason, then the pool waits).
    pub(super) async fn pool_task(&self, spec: &PoolSpec, world: &World) -> TaskResult {
        let pass = PoolPass {
            cloud: &self.cloud,
            store: self.store,
            owner: &self.config.owner,
            demand: self.demand.as_ref(),
        };
        match self.pool_pass(&pass, spec, world).await {
            Ok(found) => Ok(Done(found.into_iter().collect())),
            Err(e) if self.stopped_by_fence(None, &e).await => Err(TaskError::Quiet),
            Err(e) => {
                let reason = super::boxes::failure_reason(&e);
                self.metrics
                    .pools
                    .launch_failures
                    .get_or_create(&self.metrics.pools.kind(&spec.name, reason))
                    .inc();
                tracing::warn!(pool = %spec.name, "pool pass failed: {e}");
                Err(TaskError::backing_off(EventKind::PassFailed, reason, e))
            }
        }
    }

    /// Instances and open spot requests of pools that no longer exist (a pool
    /// deleted, or removed from the config file) are taken down, instances
    /// only once older than [`ORPHAN_GRACE`].
    async fn collect_orphans(
        &self,
        pools: &[PoolSpec],
        unreadable: &HashSet<String>,
        world: &World,
    ) -> Result<Vec<String>, BoxError> {
        let known: HashSet<&str> = pools.iter().map(|p| p.name.as_str()).collect();
        let deleted: HashSet<String> = self.owned().deleted_pools().await?.into_iter().collect();
        // Never terminate what cannot be read: an orphan is a pool recorded
        // as deleted, not merely one without a spec (a lost or wrong state
        // file, a spec that no longer parses).
        let orphan = |tags: &std::collections::BTreeMap<String, String>| {
            tags.get(tags::POOL).is_some_and(|p| {
                !known.contains(p.as_str()) && !unreadable.contains(p) && deleted.contains(p)
            })
        };
        self.report_unknown_pools(&known, unreadable, &deleted, world)
            .await;
        let instances: Vec<InstanceId> = world
            .instances
            .iter()
            .filter(|i| orphan(&i.tags) && i.state.is_live())
            .filter(|i| {
                i.launched_at
                    .is_none_or(|t| self.clock.since(t) >= ORPHAN_GRACE)
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
            self.record(None, EventKind::Orphans, d).await;
        }
        Ok(done)
    }

    /// Instances of a pool with no spec here and no record of its deletion
    /// are left alone, and said once.
    async fn report_unknown_pools(
        &self,
        known: &HashSet<&str>,
        unreadable: &HashSet<String>,
        deleted: &HashSet<String>,
        world: &World,
    ) {
        let mut unknown: Vec<&str> = world
            .instances
            .iter()
            .filter(|i| i.state.is_live())
            .filter_map(|i| i.tag(tags::POOL))
            .filter(|p| !known.contains(p) && !unreadable.contains(*p) && !deleted.contains(*p))
            .collect();
        unknown.sort();
        unknown.dedup();
        self.metrics
            .left_alone(EventKind::UnknownPool.as_str())
            .set(unknown.len() as i64);
        for p in &unknown {
            let first = self.lock_memory().reported_unknown.insert((*p).to_owned());
            if first {
                self.record(
                    None,
                    EventKind::UnknownPool,
                    &format!(
                        "instances of pool {p}: no spec here and no record of its deletion; left alone \
                         (register the pool again, or delete it through the API to collect them)"
                    ),
                )
                .await;
            }
        }
    }

    /// Offerings a pool should not use now: interrupted or refused, for a
    /// box or a pool alike (one set).
    fn pool_unavailable(&self) -> HashSet<OfferingKey> {
        self.lock_memory().unavailable.active(Instant::now())
    }

    async fn pool_pass(
        &self,
        pass: &PoolPass<'_>,
        spec: &PoolSpec,
        world: &World,
    ) -> Result<Option<String>, BoxError> {
        let memory = self.pool_memory(&spec.name).await?;
        let spot_blocked = self
            .lock_memory()
            .spot_blocked
            .contains(&spec.name, Instant::now());
        let unavailable = self.pool_unavailable();
        let now = self.clock.now();
        let out = pass
            .run(spec, world, &unavailable, spot_blocked, &memory, now)
            .await?;
        {
            let until = Instant::now() + UNAVAILABLE_FOR;
            let mut m = self.lock_memory();
            for key in &out.marks {
                m.unavailable.insert(key.clone(), until);
            }
            if out.block_spot {
                m.spot_blocked.insert(spec.name.clone(), until);
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
        self.lock_memory()
            .pools
            .insert(spec.name.clone(), memory.clone());
        self.save_pool_pass(spec, &out, &memory, spot_blocked, now)
            .await?;
        self.pool_metrics(spec, &out);
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

    /// What the last pass of a pool left to the next: in memory, or after a
    /// restart what it saved.
    async fn pool_memory(&self, pool: &str) -> Result<PoolMemory, BoxError> {
        if let Some(m) = self.lock_memory().pools.get(pool).cloned() {
            return Ok(m);
        }
        let to_time = |s: i64| std::time::UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
        Ok(self
            .owned()
            .pool_status(Some(pool))
            .await?
            .into_iter()
            .next()
            .map(|s| PoolMemory {
                last_desired: s.last_desired.map(|d| d.max(0) as u32),
                surplus_since: s.surplus_since.map(to_time),
            })
            .unwrap_or_default())
    }

    /// The pass's plan and status, and a desired/current sample for the charts.
    async fn save_pool_pass(
        &self,
        spec: &PoolSpec,
        out: &Outcome,
        memory: &PoolMemory,
        spot_blocked: bool,
        now: std::time::SystemTime,
    ) -> Result<(), BoxError> {
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
        self.owned().save_pool_status(&status).await?;
        self.owned()
            .record_pool_sample(
                &spec.name,
                status.at,
                i64::from(out.plan.desired),
                i64::from(out.plan.current),
            )
            .await?;
        Ok(())
    }

    /// The pool's gauges and counters after a pass.
    fn pool_metrics(&self, spec: &PoolSpec, out: &Outcome) {
        let m = &self.metrics.pools;
        let label = crate::metrics::PoolLabel {
            pool: spec.name.clone(),
        };
        let kind = |k: &str| m.kind(&spec.name, k);
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
    }
}
