//! Box reconciliation: what a managed box needs now, decided by a pure
//! function of one observation ([`plan_box`]), and the steps that carry it
//! out. Steps that answer at once (terminate a duplicate, cancel a stale
//! request, retire a replaced instance) run in the pass; everything that
//! waits (a launch and its ready check, volumes and DNS, an image, the way
//! back to spot) is a [`Work`] item for the task runner, so a pass never
//! waits on one box.

use spotkeeper_cloud::prelude::*;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Instance, InstanceId, InstanceState, Market, SpotPrice, SpotRequest, SpotRequestId,
    SpotRequestState,
};

use super::tasks::{Done, TaskError, TaskResult, Work};
use super::{Daemon, ORPHAN_GRACE, Observation};
use crate::boxes::{self, Avoid, BoxError, Known};
use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::subject::Subject;

/// What one box needs, as [`plan_box`] decides it.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// No instance counts and none is coming up: launch a replacement (a task).
    Launch,
    /// An instance is coming up: a later pass looks again.
    Wait(InstanceId),
    /// Live duplicates past the grace period: terminated now, `keep` kept.
    TerminateDuplicates {
        /// The instance every racer agrees to keep.
        keep: InstanceId,
        /// The others.
        extra: Vec<InstanceId>,
    },
    /// Open spot requests of a box that already runs: cancelled now.
    CancelStale(Vec<SpotRequestId>),
    /// The running instance's volumes, address and DNS are not known to be
    /// in place (a new instance, a restart, or a while since): a task.
    Settle(InstanceId),
    /// Instances going away (warned, rebalanced) still live while a settled
    /// replacement runs: terminated now.
    Retire(Vec<InstanceId>),
    /// On on-demand for want of spot: try spot again (a task).
    BackToSpot(InstanceId),
    /// The image schedule may be due: a task checks and makes it.
    Image(InstanceId),
    /// The running spot instance's price rose above the ceiling and an
    /// offering under it exists: it is marked as going away and replaced
    /// (a task), then retired like a rebalanced one.
    OverCeiling {
        /// The instance.
        instance: InstanceId,
        /// Its offering's price now.
        price: f64,
    },
}

/// One box's share of an observation, and the daemon's memory of it.
#[derive(Debug, Clone, Copy)]
pub struct BoxFacts<'o> {
    /// The box's instances (any state).
    pub instances: &'o [&'o Instance],
    /// The box's spot requests.
    pub requests: &'o [&'o SpotRequest],
    /// Instances about to go away (spot warnings, rebalance, state changes).
    pub doomed: &'o HashSet<InstanceId>,
    /// Those marked longer ago than [`super::DOOMED_BOUND`].
    pub long_doomed: &'o HashSet<InstanceId>,
    /// The instance whose volumes and DNS were settled lately, if any.
    pub settled: Option<&'o InstanceId>,
    /// Whether the image schedule should be looked at.
    pub image_check_due: bool,
    /// The spot prices the pass read (the box's types in its zones).
    pub prices: &'o [SpotPrice],
    /// Now.
    pub now: SystemTime,
}

/// What `spec`'s box needs, from `facts` alone (no I/O).
pub fn plan_box(spec: &BoxSpec, facts: &BoxFacts<'_>) -> Vec<Step> {
    let counts = |i: &&Instance| counts(facts, i);
    let running = facts
        .instances
        .iter()
        .copied()
        .filter(|i| i.state == InstanceState::Running)
        .filter(counts);
    let Some(healthy) = boxes::keeper(running) else {
        return match facts
            .instances
            .iter()
            .copied()
            .filter(counts)
            .find(|i| i.state == InstanceState::Pending)
        {
            Some(p) => vec![Step::Wait(p.id.clone())],
            None => vec![Step::Launch],
        };
    };
    let mut steps = Vec::new();
    let extra = duplicates(facts, healthy);
    if !extra.is_empty() {
        steps.push(Step::TerminateDuplicates {
            keep: healthy.id.clone(),
            extra,
        });
    }
    let stale: Vec<SpotRequestId> = facts
        .requests
        .iter()
        .filter(|r| r.state == SpotRequestState::Open && r.instance_id.is_none())
        .map(|r| r.id.clone())
        .collect();
    if !stale.is_empty() {
        steps.push(Step::CancelStale(stale));
    }
    // Replaced instances go once the replacement is settled, or in any case
    // once they have been going away for too long.
    let settled = facts.settled == Some(&healthy.id);
    let going: Vec<InstanceId> = facts
        .instances
        .iter()
        .filter(|i| facts.doomed.contains(&i.id) && i.state.is_live())
        .filter(|i| settled || facts.long_doomed.contains(&i.id))
        // Not while its `on_interruption` hook runs (bounded by the gate's deadline).
        .filter(|i| crate::hook::holds(i, facts.now).is_none())
        .map(|i| i.id.clone())
        .collect();
    if !going.is_empty() {
        steps.push(Step::Retire(going));
    }
    if !settled {
        steps.push(Step::Settle(healthy.id.clone()));
        return steps;
    }
    if let Some(price) = over_ceiling(spec, healthy, facts.prices) {
        steps.push(Step::OverCeiling {
            instance: healthy.id.clone(),
            price,
        });
        return steps;
    }
    if healthy.market == Market::OnDemand
        && spec.market == Market::Spot
        && spec.launch.fallback_on_demand
    {
        steps.push(Step::BackToSpot(healthy.id.clone()));
    } else if spec.images.every.is_some() && facts.image_check_due {
        steps.push(Step::Image(healthy.id.clone()));
    }
    steps
}

/// Whether an instance counts as the box's: not doomed, not marked stopped.
fn counts(facts: &BoxFacts<'_>, i: &Instance) -> bool {
    !facts.doomed.contains(&i.id) && i.tag(tags::STOPPED).is_none()
}

/// The box's other live instances, once past the orphan grace (a racing
/// `up` may still be settling a younger one).
fn duplicates(facts: &BoxFacts<'_>, healthy: &Instance) -> Vec<InstanceId> {
    facts
        .instances
        .iter()
        .copied()
        .filter(|i| counts(facts, i))
        .filter(|i| i.state.is_live() && i.id != healthy.id)
        .filter(|i| {
            i.launched_at
                .is_none_or(|t| facts.now.duration_since(t).unwrap_or_default() >= ORPHAN_GRACE)
        })
        .map(|i| i.id.clone())
        .collect()
}

/// The price of `running`'s offering when it is above the box's ceiling and
/// some allowed offering is at or under it (in the same zone when the box's
/// volumes keep it there); else `None`: with nowhere cheaper to go, the box
/// stays. A ceiling AWS holds (`price_cap = "aws"`) is left to AWS.
fn over_ceiling(spec: &BoxSpec, running: &Instance, prices: &[SpotPrice]) -> Option<f64> {
    if running.market != Market::Spot || spec.price_cap == crate::config::PriceCap::Aws {
        return None;
    }
    let zone = running.zone.as_deref()?;
    let now = prices
        .iter()
        .find(|p| p.instance_type == running.instance_type && p.zone == zone)?
        .price;
    // A box in subnets can go only where one of them is: the pure planner
    // knows those zones only when `zones` lists them, else it stays put.
    let pinned = ((spec.data_volume.is_some() || spec.root_volume.is_some()) && !spec.move_volume)
        || (!spec.subnets.is_empty() && spec.launch.zones.is_none());
    let elsewhere = prices.iter().any(|p| {
        p.price <= spec.max_price
            && spec.instance_types.contains(&p.instance_type)
            && spec
                .launch
                .zones
                .as_ref()
                .is_none_or(|z| z.contains(&p.zone))
            && (!pinned || p.zone == zone)
    });
    (now > spec.max_price && elsewhere).then_some(now)
}

/// A settled box is looked at again (volumes, DNS) after this long, in case
/// someone changed them by hand; until then a pass makes no call for it.
pub const SETTLE_AGAIN_AFTER: Duration = Duration::from_secs(10 * 60);

impl Daemon<'_> {
    /// Plans one box on `obs` and runs the prompt steps; returns what it did
    /// and the work for tasks.
    pub(super) async fn plan_and_step(
        &self,
        spec: &BoxSpec,
        obs: &Observation,
    ) -> Result<(Vec<String>, Vec<Work>), BoxError> {
        let name = spec.name.as_str();
        let (instances, requests) = obs.of_box(name);
        let settled = self.settled_instance(name);
        let facts = BoxFacts {
            instances: &instances,
            requests: &requests,
            doomed: &obs.doomed,
            long_doomed: &obs.long_doomed,
            settled: settled.as_ref(),
            image_check_due: self.image_check_due(name),
            prices: &obs.prices,
            now: self.clock.now(),
        };
        self.start_missed_hooks(spec, &instances, &obs.warned).await;
        let mut done = Vec::new();
        let mut work = Vec::new();
        for step in plan_box(spec, &facts) {
            match step {
                // A box whose replacements keep failing waits out its
                // backoff (a warning's fast path does not).
                Step::Launch if self.backing_off(&Subject::Box(name.to_owned())) => {}
                Step::Launch => work.push(Work::Replace {
                    spec: spec.clone(),
                    known: None,
                }),
                Step::Wait(_) => {}
                Step::OverCeiling { .. }
                | Step::TerminateDuplicates { .. }
                | Step::CancelStale(_)
                | Step::Retire(_) => {
                    if let Some(what) = self.prompt_step(spec, step, &mut work).await? {
                        done.push(what);
                    }
                }
                Step::Settle(ref id) | Step::BackToSpot(ref id) | Step::Image(ref id) => {
                    let instance = instances
                        .iter()
                        .find(|i| &i.id == id)
                        .map(|i| (*i).clone())
                        .expect("the plan names an observed instance");
                    let spec = spec.clone();
                    work.push(match step {
                        Step::Settle(_) => Work::Settle { spec, instance },
                        Step::BackToSpot(_) => Work::BackToSpot { spec, instance },
                        _ => Work::Image { spec, instance },
                    });
                }
            }
        }
        // Replicas wait for the box to be settled (its volume in place).
        if work.is_empty() && settled.is_some() && self.replication_due(spec) {
            work.push(Work::Replicate { spec: spec.clone() });
        }
        Ok((done, work))
    }

    /// Runs a step a pass does at once (no waiting on the box); says what it did.
    async fn prompt_step(
        &self,
        spec: &BoxSpec,
        step: Step,
        work: &mut Vec<Work>,
    ) -> Result<Option<String>, BoxError> {
        let name = spec.name.as_str();
        match step {
            Step::OverCeiling { instance, price } => {
                // Marked first: a crash here leaves a box the next pass replaces.
                self.owned()
                    .doom(
                        &Subject::Box(name.to_owned()),
                        instance.as_str(),
                        EventKind::OverCeiling,
                    )
                    .await?;
                let what = format!(
                    "spot price of {instance} is {price}, over the ceiling of {}: replacing it under the ceiling",
                    spec.max_price
                );
                self.record(Some(name), EventKind::OverCeiling, &what).await;
                work.push(Work::Replace {
                    spec: spec.clone(),
                    known: None,
                });
                Ok(Some(what))
            }
            Step::TerminateDuplicates { keep, extra } => {
                self.cloud.terminate(&extra).await?;
                let ids: Vec<&str> = extra.iter().map(InstanceId::as_str).collect();
                let what = format!(
                    "duplicate instances {} terminated; {keep} kept",
                    ids.join(" "),
                );
                self.record(Some(name), EventKind::Duplicate, &what).await;
                Ok(Some(what))
            }
            Step::CancelStale(stale) => {
                self.cloud.cancel_spot_requests(&stale).await?;
                let ids: Vec<&str> = stale.iter().map(|r| r.as_str()).collect();
                let what = format!(
                    "open spot requests {} cancelled: the box already runs",
                    ids.join(" "),
                );
                self.record(Some(name), EventKind::StaleRequest, &what)
                    .await;
                Ok(Some(what))
            }
            Step::Retire(old) => {
                self.cloud.terminate(&old).await?;
                let ids: Vec<&str> = old.iter().map(InstanceId::as_str).collect();
                self.record(
                    Some(name),
                    EventKind::Retired,
                    &format!("terminated {}: the replacement runs", ids.join(" ")),
                )
                .await;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// What the fast path launches from: the box's resolved image (known
    /// once a task settled or launched it) and the last pass's zones and
    /// prices. `None` when any of it is missing: the slow path then asks AWS.
    pub(super) fn known(&self, spec: &BoxSpec, obs: &Observation) -> Option<Known> {
        // An open spot request may still be fulfilled: `up` waits for it.
        if obs.requests.iter().any(|r| {
            r.tag(tags::BOX) == Some(spec.name.as_str()) && r.state == SpotRequestState::Open
        }) {
            return None;
        }
        let image = self.lock_memory().images.get(&spec.name).cloned()?;
        if !spec.subnets.is_empty() {
            return None;
        }
        let zones = match &spec.launch.zones {
            Some(z) => z.clone(),
            None if !obs.zones.is_empty() => obs.zones.clone(),
            None => return None,
        };
        if spec.market == Market::Spot && obs.prices.is_empty() {
            return None;
        }
        // Volumes as found when the box's current instance was settled; a
        // box changed since (stop and up elsewhere) has another instance.
        let settled = self.settled_instance(&spec.name);
        let volumes = self
            .lock_memory()
            .volumes
            .get(&spec.name)
            .filter(|(id, _)| settled.as_ref() == Some(id))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        Some(Known {
            image,
            volumes,
            zones,
            prices: obs
                .prices
                .iter()
                .filter(|p| spec.instance_types.contains(&p.instance_type))
                .cloned()
                .collect(),
        })
    }

    /// A replacement: `up` avoiding doomed instances and unavailable
    /// offerings (from `known` when the fast path has it), then the replaced
    /// instances are terminated.
    pub(super) async fn replace(&self, spec: &BoxSpec, known: Option<&Known>) -> TaskResult {
        let name = spec.name.as_str();
        // A box with other regions may live (or now go) elsewhere.
        if let Some(done) = self.elsewhere(spec).await {
            return done;
        }
        let doomed: HashSet<InstanceId> = self
            .owned()
            .doomed()
            .await
            .map_err(|e| TaskError::failed(EventKind::ReplaceFailed, e))?
            .into_iter()
            .map(InstanceId::new)
            .collect();
        let avoid = Avoid {
            instances: doomed.clone(),
            offerings: self.unavailable(),
        };
        let ctx = self.ctx();
        match boxes::up_known(&ctx, spec, &avoid, known).await {
            // The instance this daemon settled, not listed yet (eventual
            // consistency): nothing was replaced.
            Ok(out)
                if !out.launched
                    && self.settled_instance(name).as_ref() == Some(&out.instance.id) =>
            {
                Ok(Done::default())
            }
            Ok(out) => {
                self.home_launch(spec, false);
                if out.launched {
                    self.lock_memory().launched.insert(
                        out.instance.id.clone(),
                        (out.instance.clone(), tokio::time::Instant::now()),
                    );
                }
                let what = format!(
                    "replacement {} ({} in {}) is up",
                    out.instance.id,
                    out.instance.instance_type,
                    out.instance.zone.as_deref().unwrap_or("?")
                );
                self.count_replacement(name);
                self.record(Some(name), EventKind::Replaced, &what).await;
                self.settled(spec, &out.instance.id);
                self.remember_launch(spec, &out.instance.id).await;
                // The replaced instances (rebalance: still running) go now.
                if let Err(e) = self.retire_doomed(name, &doomed, &out.instance.id).await {
                    self.record(Some(name), EventKind::RetireFailed, &e.to_string())
                        .await;
                }
                Ok(Done::said(what))
            }
            Err(e) if self.stopped_by_fence(Some(name), &e).await => Err(TaskError::Quiet),
            // Its stop is under way: a pass runs that instead.
            Err(BoxError::Stopping { .. }) => Err(TaskError::Quiet),
            Err(e) => {
                self.metrics.launch_failure(failure_reason(&e));
                if boxes::spot_unavailable(&e) {
                    self.home_launch(spec, true);
                }
                // Tried again after a growing pause, said once per kind of
                // failure (not every pass, not to every sink every pass).
                Err(TaskError::backing_off(
                    EventKind::ReplaceFailed,
                    failure_reason(&e),
                    e,
                ))
            }
        }
    }

    /// A stop job: run (or resume) to its end. A failure is said once and
    /// tried again after a growing pause.
    pub(super) async fn stop_box(&self, spec: &BoxSpec) -> TaskResult {
        let name = spec.name.as_str();
        let stopped = async {
            // A box that lives in another region is taken down there first.
            self.stop_elsewhere(spec).await?;
            boxes::finish_stop(&self.ctx(), spec, false).await
        };
        match stopped.await {
            Ok(out) => Ok(Done::said(format!(
                "box {name} stopped: terminated {:?}, cancelled {:?}",
                out.terminated, out.cancelled
            ))),
            Err(e) if self.stopped_by_fence(Some(name), &e).await => Err(TaskError::Quiet),
            Err(e) => {
                if let Err(s) = self.owned().stop_failed(name, &e.to_string()).await {
                    tracing::warn!("recording a failed stop: {s}");
                }
                Err(TaskError::backing_off(
                    EventKind::StopFailed,
                    failure_reason(&e),
                    e,
                ))
            }
        }
    }

    async fn retire_doomed(
        &self,
        name: &str,
        doomed: &HashSet<InstanceId>,
        keep: &InstanceId,
    ) -> Result<(), BoxError> {
        let old: Vec<InstanceId> = self
            .cloud
            .instances(&boxes::box_filter(&self.config.owner, name))
            .await?
            .into_iter()
            .filter(|i| doomed.contains(&i.id) && i.state.is_live() && &i.id != keep)
            // One whose hook still runs is retired by a later pass.
            .filter(|i| crate::hook::holds(i, self.clock.now()).is_none())
            .map(|i| i.id)
            .collect();
        if !old.is_empty() {
            self.cloud.terminate(&old).await?;
        }
        Ok(())
    }

    /// Resolves and keeps the box's launch image and finds its volumes, for
    /// the fast path (off the critical path: after a settle or a launch).
    pub(super) async fn remember_launch(&self, spec: &BoxSpec, instance: &InstanceId) {
        let ctx = self.ctx_silent();
        if let Ok(image) = boxes::launch_image(&ctx, spec).await {
            self.lock_memory().images.insert(spec.name.clone(), image);
        }
        let mut volumes = std::collections::BTreeMap::new();
        for (role, vs) in crate::persist::volume_specs(spec) {
            if let Ok(Some(v)) =
                crate::persist::find(&self.cloud, &self.config.owner, &spec.name, role, vs).await
            {
                volumes.insert(vs.name.clone(), v);
            }
        }
        self.lock_memory()
            .volumes
            .insert(spec.name.clone(), (instance.clone(), volumes));
    }

    /// On on-demand for want of spot: a spot instance, then the on-demand
    /// one goes.
    pub(super) async fn back_to_spot(&self, spec: &BoxSpec, instance: &Instance) -> TaskResult {
        let name = spec.name.as_str();
        // Not said: the box runs (on-demand), and the next pass tries again.
        let doomed: HashSet<InstanceId> = match self.owned().doomed().await {
            Ok(d) => d.into_iter().map(InstanceId::new).collect(),
            Err(_) => return Err(TaskError::Quiet),
        };
        let mut avoid = Avoid {
            instances: doomed,
            offerings: self.unavailable(),
        };
        avoid.instances.insert(instance.id.clone());
        let mut spot_only = spec.clone();
        spot_only.launch.fallback_on_demand = false;
        let ctx = self.ctx();
        let Ok(out) = boxes::up_avoiding(&ctx, &spot_only, &avoid).await else {
            return Err(TaskError::Quiet);
        };
        let still = match self.cloud.instance(&instance.id).await {
            Ok(i) => i.is_some_and(|i| i.state.is_live()),
            Err(e) => {
                self.record(Some(name), EventKind::BackToSpot, &e.to_string())
                    .await;
                true
            }
        };
        if still
            && let Err(e) = self
                .cloud
                .terminate(std::slice::from_ref(&instance.id))
                .await
        {
            self.record(Some(name), EventKind::BackToSpot, &e.to_string())
                .await;
        }
        self.settled(spec, &out.instance.id);
        let what = format!(
            "back on spot: {} replaced on-demand {}",
            out.instance.id, instance.id
        );
        self.record(Some(name), EventKind::BackToSpot, &what).await;
        Ok(Done::said(what))
    }

    /// Scheduled images (`images.every`) of a healthy box.
    pub(super) async fn image(&self, spec: &BoxSpec, instance: &Instance) -> TaskResult {
        let name = spec.name.as_str();
        let owner = &self.config.owner;
        let newest = crate::images::box_images(&self.cloud, owner, name)
            .await
            .map_err(|e| TaskError::failed(EventKind::ImageFailed, e))?
            .into_iter()
            .next();
        let now = self.clock.now();
        match crate::images::next_due(spec, newest.as_ref()) {
            Some(due) if due <= now => {}
            due => {
                self.lock_memory()
                    .image_checks
                    .insert(name.to_owned(), due.unwrap_or(now + SETTLE_AGAIN_AFTER));
                return Ok(Done::default());
            }
        }
        // Not looked at again until the next one is due, whatever happens
        // to this one (a failure is retried after a settle interval).
        self.lock_memory()
            .image_checks
            .insert(name.to_owned(), now + SETTLE_AGAIN_AFTER);
        let (image, pruned) = crate::images::create(&self.cloud, owner, spec, instance, now)
            .await
            .map_err(|e| TaskError::failed(EventKind::ImageFailed, e))?;
        if let Some(every) = spec.images.every {
            self.lock_memory()
                .image_checks
                .insert(name.to_owned(), now + every);
        }
        if spec.image_from_box {
            self.lock_memory().images.remove(name);
        }
        self.record(
            Some(name),
            EventKind::Image,
            &format!("made image {} (pruned {pruned:?})", image.id),
        )
        .await;
        self.copy_image_to_regions(spec, &image, now).await;
        Ok(Done::default())
    }

    /// A replacement is up: counted, and timed from its warning if any.
    pub(super) fn count_replacement(&self, name: &str) {
        self.metrics.replacements.inc();
        let warned = self.lock_memory().warned_at.remove(name);
        if let Some(at) = warned {
            let took = at.elapsed().as_secs_f64();
            self.metrics.warning_to_running.observe(took);
            self.metrics
                .last_recovery_seconds
                .get_or_create(&crate::metrics::BoxLabel {
                    r#box: name.to_owned(),
                })
                .set(took);
        }
    }

    pub(super) fn image_check_due(&self, name: &str) -> bool {
        let now = self.clock.now();
        self.lock_memory()
            .image_checks
            .get(name)
            .is_none_or(|at| *at <= now)
    }
}

/// A short reason for the launch-failure metric.
pub(super) fn failure_reason(e: &BoxError) -> &'static str {
    match e {
        e if e.fenced() => "fenced",
        BoxError::Cloud(c) => c.kind.as_str(),
        BoxError::NoOffering(_) => "no-offering-under-ceiling",
        BoxError::NoCapacity { .. } => "insufficient-capacity",
        BoxError::NotReady { .. } => "not-ready",
        BoxError::Timeout { .. } => "timeout",
        BoxError::EndedEarly { .. } => "ended-early",
        _ => "other",
    }
}

#[cfg(test)]
mod tests;
