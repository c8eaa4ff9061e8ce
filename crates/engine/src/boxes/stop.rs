//! `stop` as a job: recorded before anything is done, each step recorded as
//! it is done, resumable by whoever finishes it (the CLI, this daemon after a
//! restart, another daemon). Mark, cancel, terminate; the DNS record as soon
//! as the instances are told to go (their public addresses are released
//! with them, and a name left on a released address can be taken over by
//! whoever gets the address next); then, once the instances are gone when
//! the volumes need it, the volumes' `on_stop`; then the box is no longer
//! managed.

use spotkeeper_cloud::{Instance, InstanceId, InstanceState, SpotRequest, SpotRequestState};
use tokio::time::{Instant, sleep};

use super::settle::mark_stopped;
use super::{BoxError, Ctx, StopOutcome, box_filter, take_lock};
use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::persist;
use crate::store::Outcome;

/// Stops a box: asks for its stop job ([`crate::store::OwnerStore::request_stop`])
/// and runs it to its end ([`finish_stop`]); with `wait`, until the
/// instances are shutting down even when the volumes do not need it.
pub async fn stop(ctx: &Ctx<'_>, spec: &BoxSpec, wait: bool) -> Result<StopOutcome, BoxError> {
    ctx.owned().request_stop(&spec.name).await?;
    finish_stop(ctx, spec, wait).await
}

/// Runs box `spec`'s stop job (asked for before) to its end, each step
/// recorded. Every step can be done again: one that was cut off (a request
/// timeout, a crash, SIGKILL) is finished by the next run, which finds what
/// is left in AWS. The box stays managed (and is never replaced: see
/// [`super::up`]) until the last step.
pub async fn finish_stop(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    wait: bool,
) -> Result<StopOutcome, BoxError> {
    let box_name = spec.name.as_str();
    // Under the lock: an `up` in flight has finished; from here `up` and
    // the daemons see the stop job and launch nothing for the box.
    let _lock = take_lock(ctx, box_name).await?;
    let step = |step: &'static str, what: String| async move {
        ctx.owned().stop_step(box_name, step, &what).await
    };
    let (outcome, going) = targets(ctx, box_name).await?;
    ctx.owned()
        .close_box_intents(box_name, Outcome::Stopped)
        .await?;
    let nothing = outcome.terminated.is_empty() && outcome.cancelled.is_empty();
    if nothing && going.is_empty() {
        ctx.progress.note(&format!(
            "Nothing to stop: box {box_name} has no live instance or open spot request."
        ));
    } else if !nothing {
        take_down(ctx, &outcome, wait || volumes_wait(spec)).await?;
        step(
            "terminating",
            format!(
                "terminating {:?}, cancelled {:?}",
                outcome.terminated, outcome.cancelled
            ),
        )
        .await?;
    }
    // The name first: the instances' addresses go with them.
    let dns = remove_dns(ctx, spec).await?;
    if !dns.is_empty() {
        step("dns", dns.join("; ")).await?;
    }
    // Also those a cut-off run of this job told to go, still shutting down.
    let down: Vec<InstanceId> = outcome.terminated.iter().chain(&going).cloned().collect();
    if !down.is_empty() && (wait || volumes_wait(spec)) {
        wait_down(ctx, &down, wait, volumes_wait(spec)).await?;
        step("terminated", format!("{down:?} gone")).await?;
    }
    let volumes = persist::on_stop(ctx.cloud, ctx.owner, spec).await?;
    for line in &volumes {
        ctx.progress.note(line);
    }
    if !volumes.is_empty() {
        step("volumes", volumes.join("; ")).await?;
    }
    // Said once the job is through, by whichever run finished it.
    if !(nothing && going.is_empty() && volumes.is_empty() && dns.is_empty()) {
        ctx.owned()
            .record_event(
                Some(box_name),
                EventKind::Stop,
                &format!(
                    "terminated {:?}, cancelled {:?}{}",
                    outcome.terminated,
                    outcome.cancelled,
                    if going.is_empty() {
                        String::new()
                    } else {
                        format!(", waited for {going:?}")
                    }
                ),
            )
            .await?;
    }
    ctx.owned().stop_done(box_name).await?;
    Ok(outcome)
}

/// The box's live instances (also those seen only through its requests)
/// and its open or active spot requests; and its instances shutting down.
async fn targets(
    ctx: &Ctx<'_>,
    box_name: &str,
) -> Result<(StopOutcome, Vec<InstanceId>), BoxError> {
    let filter = box_filter(ctx.owner, box_name);
    let (instances, going): (Vec<Instance>, Vec<Instance>) = ctx
        .cloud
        .instances(&filter)
        .await?
        .into_iter()
        .filter(|i| i.state != InstanceState::Terminated)
        .partition(|i| !i.state.is_gone());
    let going = going.into_iter().map(|i| i.id).collect();
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
    Ok((outcome, going))
}

/// Whether the volumes' `on_stop` needs the instances gone: snapshotting or
/// deleting a volume needs it detached.
fn volumes_wait(spec: &BoxSpec) -> bool {
    persist::volume_specs(spec)
        .iter()
        .any(|(_, vs)| vs.on_stop != crate::config::OnStop::Retain)
}

/// Marks, cancels and terminates; says whether anyone waits for the
/// instances to go.
async fn take_down(ctx: &Ctx<'_>, outcome: &StopOutcome, waits: bool) -> Result<(), BoxError> {
    // Mark first: if we die between here and the terminate, nobody mistakes
    // these for the live box, and the next run of the job finishes it.
    let mut marked: Vec<String> = outcome
        .terminated
        .iter()
        .map(|i| i.as_str().to_owned())
        .collect();
    marked.extend(outcome.cancelled.iter().map(|r| r.as_str().to_owned()));
    mark_stopped(ctx, &marked).await?;
    if !outcome.cancelled.is_empty() {
        ctx.cloud.cancel_spot_requests(&outcome.cancelled).await?;
        ctx.progress.note(&format!(
            "Cancelled spot request(s) {}",
            list(&outcome.cancelled)
        ));
    }
    if !outcome.terminated.is_empty() {
        ctx.cloud.terminate(&outcome.terminated).await?;
        ctx.progress.note(&format!(
            "Terminating {}{}",
            list(&outcome.terminated),
            if waits {
                ""
            } else {
                ": requested (not waiting)."
            }
        ));
    }
    Ok(())
}

fn list(ids: &[impl std::fmt::Display]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits for the terminated instances: shutting down with `wait`,
/// terminated (their volumes detached) when the volumes' `on_stop` needs it.
async fn wait_down(
    ctx: &Ctx<'_>,
    ids: &[InstanceId],
    wait: bool,
    volumes_wait: bool,
) -> Result<(), BoxError> {
    ctx.progress
        .start(&format!("Waiting for {} to go", list(ids)));
    wait_gone(ctx, ids, volumes_wait).await?;
    ctx.progress.finish(if wait {
        "done."
    } else {
        "done (waited: the volumes' on_stop needs them detached)."
    });
    Ok(())
}

/// Removes the DNS record unless `keep_dns`; says what it did.
async fn remove_dns(ctx: &Ctx<'_>, spec: &BoxSpec) -> Result<Vec<String>, BoxError> {
    let Some(dns) = &spec.dns else {
        return Ok(Vec::new());
    };
    let mut said = Vec::new();
    if spec.keep_dns {
        said.push(format!("Kept DNS record {} (keep_dns)", dns.name));
    } else {
        for removal in crate::dns::remove(ctx.cloud, ctx.owner, &spec.name, dns).await? {
            match removal {
                crate::dns::Removal::Deleted(Some(r)) => said.push(format!(
                    "Removed DNS record {} ({})",
                    r.name,
                    r.values.join(", ")
                )),
                crate::dns::Removal::Deleted(None) | crate::dns::Removal::Absent => {}
                crate::dns::Removal::LeftAlone(r, why) => said.push(format!(
                    "Left DNS record {} ({}) alone: {why}",
                    r.name,
                    r.values.join(", ")
                )),
            }
        }
    }
    for line in &said {
        ctx.progress.note(line);
    }
    Ok(said)
}

/// Waits until the instances are terminated (their volumes detached).
pub async fn wait_terminated(ctx: &Ctx<'_>, ids: &[InstanceId]) -> Result<(), BoxError> {
    wait_gone(ctx, ids, true).await
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
