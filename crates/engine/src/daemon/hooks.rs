//! A warned box's `on_interruption` hook: the gate is tagged on the
//! instance before the replacement is launched (so no hand-over can start
//! before it), then the hook runs over SSH beside the replacement, in a loop
//! of its own: a hook that hangs holds nothing but its own instance's
//! hand-over, and only until its deadline. With `agent = true` the agent on
//! the instance runs it; the daemon only sets the deadline and waits for
//! the agent's tag (see [`crate::hook`]).

use spotkeeper_cloud::prelude::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use spotkeeper_cloud::{Instance, SshSettings};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::Daemon;
use crate::config::BoxSpec;
use crate::event_kind::EventKind;
use crate::hook;

/// A hook to run over SSH.
#[derive(Debug, Clone)]
pub struct HookJob {
    box_name: String,
    instance: Instance,
    ssh: SshSettings,
    command: String,
    until: SystemTime,
}

impl Daemon<'_> {
    /// Opens the hook's gate on the warned `instance` and hands the hook to
    /// the hook loop. Called before the replacement is handed to a task. A
    /// gate already set (the agent was first, or an earlier delivery) is left
    /// as it is. Without a running loop (passes driven by hand) the hook is
    /// not run and no gate is set: nothing would end it early.
    pub(super) async fn start_hook(
        &self,
        instance: &Instance,
        spec: &BoxSpec,
        event_time: Option<&str>,
    ) {
        let Some(h) = &spec.on_interruption else {
            return;
        };
        if instance.tag(hook::HOOK_TAG).is_some() || instance.tag(hook::UNTIL_TAG).is_some() {
            return;
        }
        let runner = if spec.agent {
            None
        } else {
            match self.lock_memory().hooks.clone() {
                Some(tx) => Some(tx),
                None => return,
            }
        };
        if !self.lock_memory().hooked.insert(instance.id.clone()) {
            return;
        }
        let now = SystemTime::now();
        let until = hook::until(hook::warned_at(event_time, now), h.timeout, now);
        let tags = hook::gate_tags(until, runner.is_some());
        if let Err(e) = self.cloud.tag(&[instance.id.to_string()], &tags).await {
            // The replacement matters more: it goes on, and the volume moves
            // without waiting for a hook that was never started.
            let what = format!(
                "on_interruption on {}: not started, the instance could not be tagged: {e}",
                instance.id
            );
            self.record(Some(&spec.name), EventKind::HookFailed, &what)
                .await;
            return;
        }
        if let Some(tx) = runner {
            let _ = tx.send(HookJob {
                box_name: spec.name.clone(),
                instance: instance.clone(),
                ssh: spec.ssh.clone(),
                command: h.command.clone(),
                until,
            });
        }
    }

    /// Starts the hook of each of `spec`'s live `instances` whose spot
    /// warning was recorded but whose hook nobody started: the warning
    /// reached another daemon sharing the queue, or this one before it held
    /// the box, and only the lease's holder starts a hook. The pass of the
    /// holder does it, with the warning's recorded time, while the two
    /// minutes still leave the hook time before the hand-over.
    pub(super) async fn start_missed_hooks(
        &self,
        spec: &BoxSpec,
        instances: &[&Instance],
        warned: &std::collections::HashMap<spotkeeper_cloud::InstanceId, i64>,
    ) {
        if spec.on_interruption.is_none() {
            return;
        }
        let now = SystemTime::now();
        for instance in instances.iter().filter(|i| i.state.is_live()) {
            let Some(at) = warned.get(&instance.id) else {
                continue;
            };
            let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(*at).unwrap_or(0));
            if now.duration_since(at).unwrap_or_default() >= hook::WARNING_LEAD - hook::MOVE_RESERVE
            {
                continue;
            }
            let time = humantime::format_rfc3339_seconds(at).to_string();
            self.start_hook(instance, spec, Some(&time)).await;
        }
    }

    /// Runs the hooks handed to it, each beside the others, until shutdown
    /// (a hook cut by shutdown leaves its gate to expire at its deadline).
    pub(super) async fn hook_loop(
        &self,
        mut jobs: mpsc::UnboundedReceiver<HookJob>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut running: FuturesUnordered<BoxFuture<'_, ()>> = FuturesUnordered::new();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(job) = jobs.recv() => {
                    let span = tracing::info_span!(
                        "hook",
                        box_name = %job.box_name,
                        instance = %job.instance.id
                    );
                    running.push(Box::pin(self.run_hook(job).instrument(span)));
                }
                Some(()) = running.next(), if !running.is_empty() => {}
            }
        }
    }

    /// Runs one hook, tags its outcome (which ends the hand-over's wait) and
    /// records it (which notifies).
    async fn run_hook(&self, job: HookJob) {
        tracing::info!("on_interruption started");
        let ran = hook::run_over_ssh(&job.ssh, &job.instance, &job.command, job.until).await;
        let id = job.instance.id.to_string();
        let tag = vec![(hook::HOOK_TAG.to_owned(), ran.outcome.as_str().to_owned())];
        if let Err(e) = self.cloud.tag(std::slice::from_ref(&id), &tag).await {
            // The hand-over then waits for the deadline: later, never wrong.
            tracing::warn!("cannot tag the hook's outcome on {id}: {e}");
        }
        let kind = match ran.outcome {
            hook::Outcome::Done => EventKind::Hook,
            hook::Outcome::Failed | hook::Outcome::Timeout => EventKind::HookFailed,
        };
        self.metrics.event(kind.as_str());
        self.record(Some(&job.box_name), kind, &ran.describe(&id))
            .await;
    }
}
