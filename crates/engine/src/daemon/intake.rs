//! Event intake: one queue message → what it means. A spot warning, a
//! rebalance recommendation (with `on_rebalance = "replace"`) or a state
//! change away from running dooms the instance, marks its offering
//! unavailable for a while, and — the fast path — hands the box's
//! replacement straight to the task runner, launched from the last
//! observation without a full describe. The next pass verifies (level
//! triggered: a lost message changes nothing but the delay).

use spotkeeper_cloud::prelude::*;
use std::collections::HashMap;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Instance, InstanceId, InstanceState, Market, Offering};
use tokio::time::Instant;

use super::Daemon;
use super::tasks::{Job, Subject, Work};
use crate::boxes::BoxError;
use crate::event_kind::EventKind;
use crate::events::{self, Notice};

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

impl Daemon<'_> {
    /// Handles one message body. Errors are AWS or state-file failures: the
    /// message is then kept for another try.
    pub async fn handle(&self, body: &str) -> Result<Handled, BoxError> {
        let event = match events::parse(body) {
            Ok(e) => e,
            Err(e) => {
                self.metrics.event(EventKind::Garbage.as_str());
                self.record(None, EventKind::Garbage, &format!("dropped a message: {e}"))
                    .await;
                return Ok(Handled::Garbage(e.to_string()));
            }
        };
        let expected = self.lock_memory().account.clone();
        if let (Some(theirs), Some(ours)) = (&event.account, &expected)
            && theirs != ours
        {
            self.metrics.event(EventKind::ForeignAccount.as_str());
            let what = format!(
                "event {} is about account {theirs}, this daemon's queue is in {ours}: ignored",
                event.id
            );
            self.record(None, EventKind::ForeignAccount, &what).await;
            return Ok(Handled::Ignored(what));
        }
        let first_instance = event.kind.instances().first().map(|i| i.to_string());
        // Claimed first (one insert that conflicts): of the daemons sharing
        // the queue, or a message delivered twice, one acts. Acting failed:
        // forgotten, so the redelivered message is acted on again. A crash in
        // between leaves it to the passes (the box is replaced once its
        // instance is seen going).
        if !self
            .owned()
            .first_delivery(&event.id, event.kind.name(), first_instance.as_deref())
            .await?
        {
            self.metrics.event(EventKind::Duplicate.as_str());
            return Ok(Handled::Duplicate);
        }
        let outcome = match self.act(&event).await {
            Ok(o) => o,
            Err(e) => {
                if let Err(f) = self.owned().forget_delivery(&event.id).await {
                    tracing::warn!("cannot forget event {} after failing on it: {f}", event.id);
                }
                return Err(e);
            }
        };
        Ok(outcome)
    }

    async fn act(&self, event: &events::Event) -> Result<Handled, BoxError> {
        let managed: HashMap<String, Option<String>> = self
            .owned()
            .managed_boxes()
            .await?
            .into_iter()
            .map(|b| (b.name, b.spec))
            .collect();
        let (mut acted, mut ignored) = (Vec::new(), Vec::new());
        for id in event.kind.instances() {
            // A box's instance in another region (it failed over) is known
            // from its last look there: the home region has no such id.
            let known = self
                .known_spot_instance(event, id)
                .or_else(|| self.seen.away_instance(id));
            let instance = match known {
                Some(i) => i,
                // Re-read the instance (one targeted describe, not a pass):
                // events arrive late, twice, or out of order.
                None => match self.cloud.instance(id).await? {
                    Some(i) => i,
                    None => continue,
                },
            };
            tracing::debug!(%id, "event: instance read");
            if instance.tag(tags::OWNER) != Some(self.config.owner.as_str()) {
                continue;
            }
            let verdict = if let Some(why) = disagrees(event, &instance) {
                Verdict::Ignored(why)
            } else if let Some(pool) = instance.tag(tags::POOL) {
                self.act_on_pool(event, &instance, pool).await?
            } else {
                match instance.tag(tags::BOX).filter(|b| managed.contains_key(*b)) {
                    Some(box_name) => {
                        let stored = managed.get(box_name).and_then(Option::as_deref);
                        self.act_on_box(event, &instance, box_name, stored).await?
                    }
                    None => continue,
                }
            };
            match verdict {
                Verdict::Acted(what) => acted.push(what),
                Verdict::Ignored(why) => ignored.push(why),
            }
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

    /// The instance a spot warning or rebalance recommendation names, from
    /// the last observation (or, when that predates it, from this daemon's
    /// own launch of it), when it shows it as this owner's live spot
    /// instance: the describe would tell nothing more. For these notices
    /// the checks are the owner tag, the box or pool tag and the market
    /// (see [`disagrees`]), none of which AWS changes on a live instance
    /// (a tag is only changed by someone with the account's rights). So a
    /// forged message still acts only on an instance the daemon already
    /// knows as its own live spot instance, as it would after a describe,
    /// and the replacement's launch does not wait a describe (57 ms of the
    /// 71 ms between a message and its launch against the emulator). A
    /// state change, or an instance the observation does not show as live
    /// and ours, is described.
    fn known_spot_instance(&self, event: &events::Event, id: &InstanceId) -> Option<Instance> {
        if !matches!(
            event.kind,
            Notice::SpotInterruption { .. } | Notice::Rebalance { .. }
        ) {
            return None;
        }
        let ours = |i: &Instance| {
            i.tag(tags::OWNER) == Some(self.config.owner.as_str())
                && i.market == Market::Spot
                && matches!(i.state, InstanceState::Pending | InstanceState::Running)
        };
        if let Some(obs) = self.last_observation()
            && let Some(i) = obs.instances.iter().find(|i| i.id == *id)
        {
            return Some(i).filter(|i| ours(i)).cloned();
        }
        // A replacement this daemon launched after its last observation
        // (a warning soon after a replacement): as known as the observation.
        self.lock_memory()
            .launched
            .get(id)
            .map(|(i, _)| i)
            .filter(|i| ours(i))
            .cloned()
    }

    /// A pool's instance: doomed on a warning (the pool pass refills it).
    async fn act_on_pool(
        &self,
        event: &events::Event,
        instance: &Instance,
        pool: &str,
    ) -> Result<Verdict, BoxError> {
        let id = &instance.id;
        // The pool pass replaces it: it is short once the instance stops
        // counting (doomed) or is gone.
        if let Notice::SpotInterruption { .. } | Notice::ScheduledChange { .. } = &event.kind {
            self.owned()
                .doom(
                    &Subject::Pool(pool.to_owned()),
                    id.as_str(),
                    event.kind.event_kind(),
                )
                .await?;
            if let Some(zone) = &instance.zone {
                self.mark_unavailable(&instance.instance_type, zone, instance.market);
            }
        } else if !matches!(event.kind, Notice::StateChange { .. }) {
            return Ok(Verdict::Ignored(format!(
                "{} for {id} (pool {pool}): nothing to do",
                event.kind.name()
            )));
        }
        let what = format!(
            "{} for {id} of pool {pool}: the pool pass refills it",
            event.kind.name()
        );
        if let Err(e) = self
            .owned()
            .record_pool_event(pool, event.kind.event_kind(), &what)
            .await
        {
            tracing::warn!("cannot record a pool event: {e}");
        }
        Ok(Verdict::Acted(what))
    }

    /// A managed box's instance: doomed, its offering marked, and its
    /// replacement handed to the task loop at once.
    async fn act_on_box(
        &self,
        event: &events::Event,
        instance: &Instance,
        box_name: &str,
        stored: Option<&str>,
    ) -> Result<Verdict, BoxError> {
        let id = &instance.id;
        // The box's spec: from the config file, else as registered through the API.
        let spec = crate::desired::box_spec(self.config, box_name, stored)
            .ok()
            .flatten();
        let doom = match &event.kind {
            Notice::SpotInterruption { .. } | Notice::ScheduledChange { .. } => true,
            Notice::Rebalance { .. } => spec.as_ref().is_some_and(|s| s.replace_on_rebalance),
            Notice::StateChange { state, .. } => {
                !matches!(state, InstanceState::Pending | InstanceState::Running)
            }
        };
        if !doom {
            return Ok(Verdict::Ignored(format!(
                "{} for {id} ({box_name}): nothing to do",
                event.kind.name()
            )));
        }
        self.owned()
            .doom(
                &Subject::Box(box_name.to_owned()),
                id.as_str(),
                event.kind.event_kind(),
            )
            .await?;
        if matches!(
            event.kind,
            Notice::SpotInterruption { .. } | Notice::Rebalance { .. }
        ) && let Some(zone) = &instance.zone
        {
            self.mark_unavailable(&instance.instance_type, zone, instance.market);
        }
        self.lock_memory()
            .warned_at
            .entry(box_name.to_owned())
            .or_insert_with(Instant::now);
        tracing::debug!(%id, "event: doomed and marked");
        // The daemon holding the box's lease replaces it and starts its
        // hook: this one at once (the fast path); another is woken through
        // the database, and its pass reads the doomed instance and the
        // warning's time (`start_missed_hooks`).
        let held = self.holds(&Subject::Box(box_name.to_owned()));
        if let Some(spec) = spec.filter(|_| held) {
            // The hook's gate first: the replacement may settle before the
            // hook would otherwise have said it runs.
            if matches!(event.kind, Notice::SpotInterruption { .. }) {
                self.start_hook(instance, &spec, event.time.as_deref())
                    .await;
            }
            self.fast_path(spec);
        }
        if !held && let Err(e) = self.owned().wake_daemons(box_name).await {
            tracing::warn!("cannot wake the daemon holding {box_name}: {e}");
        }
        let what = acted(event, id, box_name, held);
        self.record(Some(box_name), event.kind.event_kind(), &what)
            .await;
        Ok(Verdict::Acted(what))
    }

    /// Hands the box's replacement to the running task loop, planned on the
    /// last observation. Without a running loop (tests driving passes by
    /// hand) or an observation, the woken pass does it.
    fn fast_path(&self, spec: crate::config::BoxSpec) {
        let Some(tx) = self.fast_sender() else {
            return;
        };
        let Some(obs) = self.last_observation() else {
            return;
        };
        let known = self.known(&spec, &obs);
        let job = Job {
            // Not tied to the observation's epoch: a task may well have
            // finished since (a settle, the last replacement). What the
            // observation cannot know — a launch after it — `up` finds in
            // the box's open intent, and then asks AWS first.
            epoch: None,
            subject: Subject::Box(spec.name.clone()),
            work: Work::Replace { spec, known },
        };
        let _ = tx.send(job);
    }

    pub(super) fn mark_unavailable(&self, instance_type: &str, zone: &str, market: Market) {
        let until = Instant::now() + super::UNAVAILABLE_FOR;
        self.lock_memory()
            .unavailable
            .insert(Offering::new(instance_type, zone, market), until);
    }
}

/// What was done for a box's instance, in words (a drill says so).
fn acted(event: &events::Event, id: &InstanceId, box_name: &str, held: bool) -> String {
    let drill = if crate::drill::is_drill(&event.id) {
        " (drill)"
    } else {
        ""
    };
    let what = if held {
        "replacing it"
    } else {
        "doomed; the daemon holding its lease replaces it"
    };
    format!(
        "{}{drill} for {id} of box {box_name}: {what}",
        event.kind.name()
    )
}

/// What an event came to for one instance.
enum Verdict {
    /// Acted on; what was done.
    Acted(String),
    /// Not acted on; why.
    Ignored(String),
}

/// Why an event is not believed, when AWS shows otherwise: a spot warning is
/// about a spot instance, and an instance said to be going away is not one
/// AWS shows running (a forged, replayed or out-of-order message).
fn disagrees(event: &events::Event, instance: &Instance) -> Option<String> {
    let id = &instance.id;
    if matches!(event.kind, Notice::SpotInterruption { .. }) && instance.market != Market::Spot {
        return Some(format!(
            "spot warning for {id}, which AWS shows as {}: ignored",
            instance.market
        ));
    }
    if let Notice::StateChange { state, .. } = &event.kind
        && !matches!(state, InstanceState::Pending | InstanceState::Running)
        && matches!(
            instance.state,
            InstanceState::Pending | InstanceState::Running
        )
    {
        return Some(format!(
            "state change of {id} to {state}, but AWS shows it {}: ignored",
            instance.state
        ));
    }
    None
}
