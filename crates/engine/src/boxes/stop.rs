//! `stop`: mark, cancel, terminate, wait; then the volumes' `on_stop` and
//! the DNS record.

use spotkeeper_cloud::{Instance, InstanceId, InstanceState, SpotRequest, SpotRequestState};
use tokio::time::{Instant, sleep};

use super::settle::mark_stopped;
use super::{BoxError, Ctx, StopOutcome, box_filter, take_lock};
use crate::config::BoxSpec;
use crate::persist;
use crate::store::Outcome;

/// Stops a box: marks its instances and requests (so no `up` or daemon takes
/// them for the live box), cancels open requests, terminates instances, closes
/// intents, and unless `wait` is false waits until they are shutting down.
pub async fn stop(ctx: &Ctx<'_>, spec: &BoxSpec, wait: bool) -> Result<StopOutcome, BoxError> {
    let box_name = spec.name.as_str();
    let _lock = take_lock(ctx, box_name).await?;
    // Under the lock: an `up` in flight (the daemon's, say) has finished and
    // registered the box; from here no daemon will replace what is stopped.
    ctx.store.deregister_box(ctx.owner, box_name).await?;

    let outcome = targets(ctx, box_name).await?;
    ctx.store
        .close_box_intents(ctx.owner, box_name, Outcome::Stopped)
        .await?;
    if outcome.terminated.is_empty() && outcome.cancelled.is_empty() {
        ctx.progress.note(&format!(
            "Nothing to stop: box {box_name} has no live instance or open spot request."
        ));
        after_stop(ctx, spec).await?;
        return Ok(outcome);
    }
    // Snapshotting or deleting a volume needs it detached, so its instance gone.
    let volumes_wait = persist::volume_specs(spec)
        .iter()
        .any(|(_, vs)| vs.on_stop != crate::config::OnStop::Retain);

    take_down(ctx, &outcome, wait, volumes_wait).await?;
    ctx.store
        .record_event(
            ctx.owner,
            Some(box_name),
            "stop",
            &format!(
                "terminated {:?}, cancelled {:?}",
                outcome.terminated, outcome.cancelled
            ),
        )
        .await?;
    after_stop(ctx, spec).await?;
    Ok(outcome)
}

/// The box's instances (also those seen only through its requests) and its
/// open or active spot requests.
async fn targets(ctx: &Ctx<'_>, box_name: &str) -> Result<StopOutcome, BoxError> {
    let filter = box_filter(ctx.owner, box_name);
    let instances: Vec<Instance> = ctx
        .cloud
        .instances(&filter)
        .await?
        .into_iter()
        .filter(|i| !i.state.is_gone())
        .collect();
    let requests: Vec<SpotRequest> = ctx
        .cloud
        .spot_requests(&filter)
        .await?
        .into_iter()
        .filter(|r| matches!(r.state, SpotRequestState::Open | SpotRequestState::Active))
        .collect();
    let mut outcome = StopOutcome {
        terminated: instances.iter().map(|i| i.id.clone()).collect(),
        cancelled: requests.iter().map(|r| r.id.clone()).collect(),
    };
    // Instances launched through requests we see only there.
    for r in &requests {
        if let Some(id) = &r.instance_id
            && !outcome.terminated.contains(id)
            && let Some(i) = ctx.cloud.instance(id).await?
            && !i.state.is_gone()
        {
            outcome.terminated.push(id.clone());
        }
    }
    Ok(outcome)
}

/// Marks, cancels and terminates; waits when asked or when the volumes'
/// `on_stop` needs them detached.
async fn take_down(
    ctx: &Ctx<'_>,
    outcome: &StopOutcome,
    wait: bool,
    volumes_wait: bool,
) -> Result<(), BoxError> {
    // Mark first: if we die between here and the terminate, nobody mistakes
    // these for the live box, and the next `stop` finishes the job.
    let mut marked: Vec<String> = outcome
        .terminated
        .iter()
        .map(|i| i.as_str().to_owned())
        .collect();
    marked.extend(outcome.cancelled.iter().map(|r| r.as_str().to_owned()));
    mark_stopped(ctx, &marked).await?;
    if !outcome.cancelled.is_empty() {
        ctx.cloud.cancel_spot_requests(&outcome.cancelled).await?;
        let list = outcome
            .cancelled
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        ctx.progress
            .note(&format!("Cancelled spot request(s) {list}"));
    }
    if !outcome.terminated.is_empty() {
        let list = outcome
            .terminated
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        ctx.progress.start(&format!("Terminating {list}"));
        ctx.cloud.terminate(&outcome.terminated).await?;
        if wait || volumes_wait {
            wait_gone(ctx, &outcome.terminated, volumes_wait).await?;
            ctx.progress.finish(if wait {
                "done."
            } else {
                "done (waited: the volumes' on_stop needs them detached)."
            });
        } else {
            ctx.progress.finish("requested (not waiting).");
        }
    }
    Ok(())
}

/// Volumes per `on_stop`, and the DNS record unless `keep_dns`.
async fn after_stop(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<(), BoxError> {
    for line in persist::on_stop(ctx.cloud, ctx.owner, spec).await? {
        ctx.progress.note(&line);
    }
    if let Some(dns) = &spec.dns {
        if spec.keep_dns {
            ctx.progress
                .note(&format!("Kept DNS record {} (keep_dns)", dns.name));
        } else {
            for removal in crate::dns::remove(ctx.cloud, ctx.owner, &spec.name, dns).await? {
                match removal {
                    crate::dns::Removal::Deleted(Some(r)) => ctx.progress.note(&format!(
                        "Removed DNS record {} ({})",
                        r.name,
                        r.values.join(", ")
                    )),
                    crate::dns::Removal::Deleted(None) | crate::dns::Removal::Absent => {}
                    crate::dns::Removal::LeftAlone(r, why) => ctx.progress.note(&format!(
                        "Left DNS record {} ({}) alone: {why}",
                        r.name,
                        r.values.join(", ")
                    )),
                }
            }
        }
    }
    Ok(())
}

/// Waits until the instances are shutting down (or, `terminated_only`, terminated).
async fn wait_gone(
    ctx: &Ctx<'_>,
    ids: &[InstanceId],
    terminated_only: bool,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + ctx.timing.stop_timeout;
    let mut left: Vec<InstanceId> = ids.to_vec();
    loop {
        let mut still = Vec::new();
        for id in &left {
            if let Some(i) = ctx.cloud.instance(id).await? {
                let done = if terminated_only {
                    i.state == InstanceState::Terminated
                } else {
                    i.state.is_gone()
                };
                if !done {
                    still.push(id.clone());
                }
            }
        }
        left = still;
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BoxError::Timeout {
                what: format!("{left:?} to shut down"),
                after: ctx.timing.stop_timeout,
            });
        }
        sleep(ctx.timing.poll).await;
    }
}
