//! The daemon's side of `regions = [home, …]` failover ([`crate::failover`]):
//! before a box's launch at home, where it lives is read from AWS; a box
//! whose home launches have failed for want of capacity (or of an offering
//! under the ceiling) for `failover_after` moves to its next region, from
//! the newest replica there; a box that lives elsewhere is kept there
//! (relaunched there from its volume there) until the home region has had
//! an offering under the ceiling for `return_after`, then comes back with
//! what it wrote away.
//!
//! Every step runs as the box's task and is fenced by its lease; the order
//! of the steps is written so that a crash at any point leaves AWS saying
//! where the newest data is (see [`crate::failover`]). A spot warning for a
//! box away comes through the event queue of its region (`serve` reads one
//! per region): the instance is doomed and replaced there, as at home.

use std::sync::Arc;
use std::time::Duration;

use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{Instance, InstanceId, Market, Offering};
use tokio::time::Instant;

use super::Daemon;
use super::fenced::FencedCloud;
use super::tasks::{Done, TaskError, TaskResult};
use crate::boxes::{self, Avoid, BoxError, Ctx};
use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::failover::{self, AWAY_TAG, Away};
use crate::subject::Subject;

/// Where a box was last found: `None` at home, else the region.
pub(super) type Located = Option<String>;

impl Daemon<'_> {
    /// Before a launch of `spec` at home: `Some` when the box lives (or now
    /// goes) elsewhere and that was handled here; `None` to launch at home.
    pub(super) async fn elsewhere(&self, spec: &BoxSpec) -> Option<TaskResult> {
        if spec.other_regions().is_empty() {
            return None;
        }
        let name = spec.name.as_str();
        if let Some(why) = failover::blocked(spec) {
            let what = format!("box {name} stays in {}: {why}", spec.regions[0]);
            self.record_change(
                &format!("stays-home:{name}"),
                &why,
                Some(name),
                EventKind::FailoverFailed,
                &what,
            )
            .await;
            return None;
        }
        // Known to be at home and not failing there: nothing to look at (the
        // fast path pays no call for a box with regions).
        let at_home = self.lock_memory().located.get(name) == Some(&None);
        if at_home && !self.failover_due(spec) {
            return None;
        }
        match self.elsewhere_inner(spec).await {
            Ok(Some(done)) => Some(Ok(Done(done))),
            Ok(None) => None,
            Err(e) if self.stopped_by_fence(Some(name), &e).await => Some(Err(TaskError::Quiet)),
            Err(e) => Some(Err(TaskError::backing_off(
                EventKind::FailoverFailed,
                super::boxes::failure_reason(&e),
                e,
            ))),
        }
    }

    async fn elsewhere_inner(&self, spec: &BoxSpec) -> Result<Option<Vec<String>>, BoxError> {
        let name = spec.name.as_str();
        if self.cloud.region() != spec.regions[0] {
            return Err(BoxError::Failover {
                box_name: name.to_owned(),
                why: format!(
                    "its home region is {} but the daemon runs in {}: set [aws] region = \"{}\"",
                    spec.regions[0],
                    self.cloud.region(),
                    spec.regions[0]
                ),
            });
        }
        let handles = self.region_handles(spec).await;
        if handles.len() < spec.other_regions().len() {
            return Err(BoxError::Failover {
                box_name: name.to_owned(),
                why: "a handle to one of its regions could not be made".into(),
            });
        }
        let fenced = self.fenced_in(&handles);
        let others: Vec<(String, &dyn Cloud)> = fenced
            .iter()
            .map(|(r, f)| (r.clone(), f as &dyn Cloud))
            .collect();
        let owner = self.config.owner.as_str();
        let home_volume = failover::home_volume(&self.cloud, owner, spec).await?;
        match failover::away(home_volume.as_ref(), &others, owner, spec).await? {
            Some(away) => {
                let cloud = others
                    .iter()
                    .find(|(r, _)| *r == away.region)
                    .map(|(_, c)| *c)
                    .ok_or_else(|| BoxError::Failover {
                        box_name: name.to_owned(),
                        why: format!("no handle to {}", away.region),
                    })?;
                self.located(spec, Some(&away.region), away.instance.as_ref());
                // A return under way (its last copy home started) goes on
                // whatever the prices do now.
                let copies = failover::return_copies(&self.cloud, owner, spec).await?;
                let returning = copies.iter().any(|(k, _)| k == failover::LAST_COPY);
                if self.return_due(spec) || returning {
                    return self
                        .go_home(spec, cloud, (home_volume, &copies), away)
                        .await
                        .map(Some);
                }
                self.stay_away(spec, cloud, &away).await.map(Some)
            }
            None => {
                self.located(spec, None, None);
                if spec.data_volume.is_some() && home_volume.is_none() {
                    failover::restore_returned(&self.cloud, owner, spec).await?;
                }
                if !self.failover_due(spec) {
                    return Ok(None);
                }
                match self.fail_over(spec, &others, home_volume).await {
                    // Nowhere else can take it now: home is tried again
                    // meanwhile (its capacity may come back first).
                    Err(e @ BoxError::Failover { .. }) => {
                        self.record_change(
                            &format!("failover-failed:{}", spec.name),
                            &e.to_string(),
                            Some(&spec.name),
                            EventKind::FailoverFailed,
                            &e.to_string(),
                        )
                        .await;
                        Ok(None)
                    }
                    done => done.map(Some),
                }
            }
        }
    }

    /// Before a stop: a box that lives in another region is taken down
    /// there and its data brought home ([`failover::stop_away`]).
    pub(super) async fn stop_elsewhere(&self, spec: &BoxSpec) -> Result<(), BoxError> {
        if spec.other_regions().is_empty() || failover::blocked(spec).is_some() {
            return Ok(());
        }
        let handles = self.region_handles(spec).await;
        let fenced = self.fenced_in(&handles);
        let others: Vec<(String, &dyn Cloud)> = fenced
            .iter()
            .map(|(r, f)| (r.clone(), f as &dyn Cloud))
            .collect();
        if let Some(what) = failover::stop_away(&self.ctx(), &others, spec).await? {
            self.record(Some(&spec.name), EventKind::RegionReturn, &what)
                .await;
        }
        self.located(spec, None, None);
        Ok(())
    }

    /// Remembers where the box lives (the API shows it) and when it started
    /// to live there.
    fn located(&self, spec: &BoxSpec, region: Option<&str>, instance: Option<&Instance>) {
        let mut m = self.lock_memory();
        let before = m
            .located
            .insert(spec.name.clone(), region.map(str::to_owned));
        if before.as_ref() != Some(&region.map(str::to_owned)) {
            // The home's offerings are weighed from now on.
            m.home_ok_since.remove(&spec.name);
        }
        drop(m);
        self.seen
            .set_away(&spec.name, region.and(instance).cloned());
    }

    /// A launch at home failed for want of capacity or of an offering under
    /// the ceiling (`failed`) or succeeded: the failover clock.
    pub(super) fn home_launch(&self, spec: &BoxSpec, failed: bool) {
        if spec.other_regions().is_empty() {
            return;
        }
        let mut m = self.lock_memory();
        if failed {
            m.home_failing_since
                .entry(spec.name.clone())
                .or_insert_with(Instant::now);
        } else {
            m.home_failing_since.remove(&spec.name);
            m.located.insert(spec.name.clone(), None);
            m.said.remove(&format!("failover-failed:{}", spec.name));
        }
    }

    fn failover_due(&self, spec: &BoxSpec) -> bool {
        self.lock_memory()
            .home_failing_since
            .get(&spec.name)
            .is_some_and(|since| since.elapsed() >= spec.failover_after)
    }

    /// Whether the home region has had an allowed offering at or under the
    /// ceiling (by the passes' prices) for `return_after`.
    fn return_due(&self, spec: &BoxSpec) -> bool {
        let ok = spec.market == Market::OnDemand
            || self.last_observation().is_some_and(|obs| {
                let unavailable = self.unavailable();
                obs.prices.iter().any(|p| {
                    spec.instance_types.contains(&p.instance_type)
                        && spec
                            .launch
                            .zones
                            .as_ref()
                            .is_none_or(|z| z.contains(&p.zone))
                        && p.price <= spec.max_price
                        && !unavailable.contains(&Offering::spot(&p.instance_type, &p.zone))
                })
            });
        tracing::debug!(box_name = %spec.name, ok, "the home's offerings weighed for a return");
        let mut m = self.lock_memory();
        if !ok {
            m.home_ok_since.remove(&spec.name);
            return false;
        }
        let since = *m
            .home_ok_since
            .entry(spec.name.clone())
            .or_insert_with(Instant::now);
        since.elapsed() >= spec.return_after
    }

    /// The other regions' handles, each change fenced by the work's lease
    /// as at home.
    fn fenced_in<'h>(
        &'h self,
        handles: &'h [(String, Arc<dyn Cloud>)],
    ) -> Vec<(String, FencedCloud<'h>)> {
        handles
            .iter()
            .map(|(r, c)| (r.clone(), FencedCloud::new(c.as_ref(), self.store)))
            .collect()
    }

    /// A context whose cloud is `cloud` (another region's, fenced).
    fn ctx_in<'c>(&'c self, cloud: &'c dyn Cloud) -> Ctx<'c> {
        Ctx {
            cloud,
            ..self.ctx()
        }
    }

    /// What a launch must avoid: the doomed instances, the offerings marked.
    async fn avoid(&self) -> Result<Avoid, BoxError> {
        Ok(Avoid {
            instances: self
                .owned()
                .doomed()
                .await?
                .into_iter()
                .map(InstanceId::new)
                .collect(),
            offerings: self.unavailable(),
        })
    }

    /// The box lives in `cloud`'s region: kept running there (its volume
    /// restored from the newest replica there when it has none, relaunched
    /// when its instance is gone), settled, and seen for `cost`.
    async fn stay_away(
        &self,
        spec: &BoxSpec,
        cloud: &dyn Cloud,
        away: &Away,
    ) -> Result<Vec<String>, BoxError> {
        let name = spec.name.as_str();
        // A doomed instance (its spot warning came through the queue there)
        // is replaced, not kept.
        let avoid = self.avoid().await?;
        if let Some(i) = &away.instance
            && self.settled_instance(name).as_ref() == Some(&i.id)
            && !avoid.instances.contains(&i.id)
        {
            // Seen each pass, as the home's instances are (`cost`).
            self.seen_away(i).await;
            self.recovered(&Subject::Box(name.to_owned()));
            return Ok(Vec::new());
        }
        let there = failover::spec_in(spec);
        if spec.data_volume.is_some() && away.volume.is_none() {
            let (zone, _) = self.zone_in(cloud, &there).await?;
            failover::restore(
                cloud,
                &self.config.owner,
                &there,
                &zone,
                crate::store::unix_now(),
            )
            .await?;
        }
        failover::check_image(&self.ctx_in(cloud), spec, &there).await?;
        let out = boxes::up_known(&self.ctx_in(cloud), &there, &avoid, None).await?;
        self.recovered(&Subject::Box(name.to_owned()));
        self.settled(spec, &out.instance.id);
        self.located(spec, Some(&away.region), Some(&out.instance));
        self.seen_away(&out.instance).await;
        if !out.launched {
            return Ok(Vec::new());
        }
        let what = format!(
            "replacement {} ({} in {}) is up in {}",
            out.instance.id,
            out.instance.instance_type,
            out.instance.zone.as_deref().unwrap_or("?"),
            away.region
        );
        self.count_replacement(name);
        self.record(Some(name), EventKind::Replaced, &what).await;
        Ok(vec![what])
    }

    /// The cheapest zone of the box's offerings in `cloud`'s region (their
    /// prices kept for the charts and `cost`).
    async fn zone_in(
        &self,
        cloud: &dyn Cloud,
        spec: &BoxSpec,
    ) -> Result<(String, Option<f64>), BoxError> {
        let (zone, prices) = failover::zone_for(cloud, spec).await?;
        self.sample_prices(&prices).await;
        let price = prices
            .iter()
            .filter(|p| p.zone == zone && spec.instance_types.contains(&p.instance_type))
            .map(|p| p.price)
            .reduce(f64::min);
        Ok((zone, price))
    }

    /// Records an instance in another region as seen (for `cost`).
    async fn seen_away(&self, instance: &Instance) {
        if let Err(e) = self
            .owned()
            .record_seen(std::slice::from_ref(instance))
            .await
        {
            tracing::warn!("cannot record the instances seen in the state file: {e}");
        }
    }

    /// Closes the box's open launch intent before a launch in another
    /// region: its instance is in the region the box leaves (a launch there
    /// would wait for AWS to list it, which another region never does).
    async fn close_intent(&self, name: &str) -> Result<(), BoxError> {
        if let Some(open) = self.owned().open_intent(name).await? {
            self.store
                .close_intent(open.id, crate::store::Outcome::Gone)
                .await?;
        }
        Ok(())
    }

    /// Terminates an instance in another region, waits until it is gone,
    /// and records its end (for `cost`).
    async fn seen_gone_after(&self, ctx: &Ctx<'_>, id: &InstanceId) -> Result<(), BoxError> {
        failover::quiesce(ctx, id).await?;
        self.seen_gone(ctx.cloud, id).await;
        Ok(())
    }

    /// Records the end of an instance in another region (for `cost`).
    async fn seen_gone(&self, cloud: &dyn Cloud, id: &InstanceId) {
        match cloud.instance(id).await {
            Ok(Some(i)) => self.seen_away(&i).await,
            Ok(None) => {}
            Err(e) => tracing::warn!("describing {id} after its termination: {e}"),
        }
    }

    /// Moves the box from its home to the other region that can take it
    /// most cheaply (its offering's price plus `region_surcharge`; listed
    /// order between equals): one with the box's image, an offering under
    /// the ceiling and (with a data volume) a completed replica. Recorded
    /// before anything changes.
    async fn fail_over(
        &self,
        spec: &BoxSpec,
        others: &[(String, &dyn Cloud)],
        home_volume: Option<spotkeeper_cloud::Volume>,
    ) -> Result<Vec<String>, BoxError> {
        let name = spec.name.as_str();
        let owner = self.config.owner.as_str();
        let failing = self
            .lock_memory()
            .home_failing_since
            .get(name)
            .map(|s| s.elapsed())
            .unwrap_or_default();
        let now = crate::store::unix_now();
        let (mut able, mut refused) = (Vec::new(), Vec::new());
        for (n, (region, cloud)) in others.iter().enumerate() {
            let there = failover::spec_in(spec);
            match self.can_take(spec, &there, region, *cloud, now).await? {
                Ok(c) => able.push((failover::adjusted(spec, region, c.2), n, c)),
                Err(why) => refused.push(format!("{region}: {why}")),
            }
        }
        // The cheapest region with its surcharge first; the listed order
        // between equals.
        able.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        if let Some((adjusted, n, (zone, data, _))) = able.into_iter().next() {
            let (region, cloud) = &others[n];
            let there = failover::spec_in(spec);
            let data = format!("{data}; {adjusted:.4} USD/h with its surcharge");
            let what = format!(
                "box {name} fails over from {} to {region} ({zone}): launches at home have \
                 failed for want of capacity or of an offering under the ceiling for {}; {data}{}",
                spec.regions[0],
                humantime::format_duration(Duration::from_secs(failing.as_secs())),
                if spec.elastic_ip.is_some() {
                    "; its Elastic IP stays at home (DNS follows the box)"
                } else {
                    ""
                }
            );
            // Said, then marked in AWS, before anything is made there.
            self.record(Some(name), EventKind::RegionFailover, &what)
                .await;
            if let Some(v) = &home_volume {
                self.cloud
                    .tag(
                        &[v.id.to_string()],
                        &[(AWAY_TAG.to_owned(), region.clone())],
                    )
                    .await?;
            }
            if spec.data_volume.is_some() {
                failover::restore(*cloud, owner, &there, &zone, now).await?;
            }
            self.close_intent(name).await?;
            let out =
                boxes::up_known(&self.ctx_in(*cloud), &there, &self.avoid().await?, None).await?;
            self.lock_memory().home_failing_since.remove(name);
            self.settled(spec, &out.instance.id);
            self.located(spec, Some(region), Some(&out.instance));
            self.seen_away(&out.instance).await;
            self.count_replacement(name);
            let up = format!(
                "replacement {} ({} in {}) is up in {region}",
                out.instance.id,
                out.instance.instance_type,
                out.instance.zone.as_deref().unwrap_or("?")
            );
            self.record(Some(name), EventKind::Replaced, &up).await;
            return Ok(vec![what, up]);
        }
        Err(BoxError::Failover {
            box_name: name.to_owned(),
            why: format!("no other region can take it now ({})", refused.join("; ")),
        })
    }

    /// Whether `cloud`'s region can take the box now: its zone there, the
    /// age of the data it would start from and the price there (spot), or
    /// why not.
    async fn can_take(
        &self,
        spec: &BoxSpec,
        there: &BoxSpec,
        region: &str,
        cloud: &dyn Cloud,
        now: i64,
    ) -> Result<Result<(String, String, Option<f64>), String>, BoxError> {
        let (zone, price) = match self.zone_in(cloud, there).await {
            Ok(z) => z,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(e) = failover::check_image(&self.ctx_in(cloud), spec, there).await {
            return Ok(Err(e.to_string()));
        }
        let Some(vs) = &spec.data_volume else {
            return Ok(Ok((zone, "it has no data volume".to_owned(), price)));
        };
        let all = crate::replicate::replicas(cloud, &self.config.owner, &vs.name).await?;
        Ok(match crate::replicate::recovery_point(&all, region, now) {
            Some(age) => Ok((
                zone,
                format!("its data is {} old", failover::minutes(age)),
                price,
            )),
            None => Err(format!("no completed replica of {}", vs.name)),
        })
    }

    /// Brings the box home from `cloud`'s region, one step per pass
    /// ([`failover::return_step`]: copies home are never waited for here):
    /// once the home volume holds the data written away, the box is
    /// launched at home and what is stale deleted. Without a data volume:
    /// launched at home first, the one away terminated after.
    async fn go_home(
        &self,
        spec: &BoxSpec,
        cloud: &dyn Cloud,
        (home_volume, copies): (
            Option<spotkeeper_cloud::Volume>,
            &[(String, spotkeeper_cloud::Snapshot)],
        ),
        away: Away,
    ) -> Result<Vec<String>, BoxError> {
        let name = spec.name.as_str();
        let away_ctx = self.ctx_in(cloud);
        let data = match spec.data_volume {
            Some(_) => {
                let step = failover::return_step(
                    &self.ctx(),
                    cloud,
                    spec,
                    &away,
                    (home_volume.as_ref(), copies),
                )
                .await;
                if let Some(i) = &away.instance {
                    self.seen_gone(cloud, &i.id).await;
                }
                match step? {
                    // Not waited for here: the next pass looks again.
                    failover::Return::Copying(what) => {
                        let key = format!("returning:{name}");
                        let before = self.lock_memory().said.insert(key, what.clone());
                        if before.as_deref() != Some(what.as_str()) {
                            tracing::info!(box_name = name, "returning home: {what}");
                        }
                        self.recovered(&Subject::Box(name.to_owned()));
                        return Ok(Vec::new());
                    }
                    failover::Return::Home(what) => what,
                }
            }
            None => "it has no data volume".to_owned(),
        };
        self.state_ended(&format!("returning:{name}"));
        self.close_intent(name).await?;
        let out = boxes::up_known(&self.ctx(), spec, &self.avoid().await?, None).await?;
        self.home_launch(spec, false);
        self.settled(spec, &out.instance.id);
        self.located(spec, None, None);
        if let (None, Some(i)) = (&spec.data_volume, &away.instance) {
            self.seen_gone_after(&away_ctx, &i.id).await?;
        }
        failover::clear_stale(&self.cloud, cloud, &self.config.owner, spec).await;
        let what = format!(
            "box {name} is back in {} ({} in {}) from {}: {data}",
            spec.regions[0],
            out.instance.id,
            out.instance.zone.as_deref().unwrap_or("?"),
            away.region
        );
        self.record(Some(name), EventKind::RegionReturn, &what)
            .await;
        Ok(vec![what])
    }
}
