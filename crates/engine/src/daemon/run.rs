//! The daemon's loops: the event queue's intake, the reconcile passes with
//! their tasks, the leases and the hooks, side by side until shutdown.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::boxes;
use super::tasks::{self, Done, Job, Runner, Subject, TaskError, TaskResult, Work};
use super::{Daemon, EventQueue, MAX_BACKOFF, PassOutcome, backoff};
use crate::boxes::BoxError;
use crate::event_kind::EventKind;

impl Daemon<'_> {
    /// Runs one task's work; [`Daemon::book`] books the outcome.
    pub(super) async fn execute(&self, work: &Work) -> TaskResult {
        match work {
            Work::Replace { spec, known } => self.replace(spec, known.as_ref()).await,
            Work::Settle { spec, instance } => self.settle(spec, instance).await,
            Work::Image { spec, instance } => self.image(spec, instance).await,
            Work::BackToSpot { spec, instance } => self.back_to_spot(spec, instance).await,
            Work::Pool { spec, world } => self.pool_task(spec, world).await,
            Work::Stop { spec } => self.stop_box(spec).await,
            Work::Replicate { spec } => self.replicate(spec).await,
        }
    }

    /// Books a task's outcome (see [`tasks`]) and returns its log lines.
    pub(super) async fn book(
        &self,
        subject: &Subject,
        task: &str,
        outcome: TaskResult,
    ) -> Vec<String> {
        // Said-once states are keyed `EVENT-KIND:SUBJECT`.
        let suffix = format!(":{subject}");
        let (event, message, reason, backoff) = match outcome {
            Ok(Done(lines)) => {
                self.recovered(subject);
                self.lock_memory().said.retain(|k, _| !k.ends_with(&suffix));
                return lines;
            }
            Err(TaskError::Quiet) => return Vec::new(),
            Err(TaskError::Failed {
                kind,
                message,
                reason,
                backoff,
            }) => (kind, message, reason, backoff),
        };
        self.metrics.task_failed(task);
        if backoff {
            self.failed(subject);
        }
        let news = reason.is_none_or(|r| self.news(&format!("{}{suffix}", event.as_str()), r));
        if !news {
            tracing::debug!(kind = event.as_str(), "{message} (said already)");
            return Vec::new();
        }
        match subject {
            Subject::Box(name) => self.record(Some(name), event, &message).await,
            Subject::Pool(name) => {
                tracing::info!(pool = %name, kind = event.as_str(), "{message}");
                if let Err(e) = self.owned().record_pool_event(name, event, &message).await {
                    tracing::warn!("cannot record an event in the state file: {e}");
                }
            }
            Subject::Fleet => self.record(None, event, &message).await,
        }
        Vec::new()
    }

    /// Runs until `shutdown` is cancelled: a pass at start (boxes lost while the
    /// daemon was down), then one per interval and one per event, with
    /// tasks beside them. On shutdown whatever is in flight is dropped at
    /// once; the next daemon resumes it.
    pub async fn run(&self, queue: &dyn EventQueue, shutdown: CancellationToken) {
        self.run_with(queue, &[], shutdown).await;
    }

    /// [`Daemon::run`], reading also the event queues of the boxes' other
    /// regions (EventBridge delivers a region's EC2 events only in that
    /// region): a box that failed over hears its spot warnings there.
    pub async fn run_with(
        &self,
        queue: &dyn EventQueue,
        away: &[std::sync::Arc<dyn EventQueue>],
        shutdown: CancellationToken,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (hook_tx, hook_rx) = mpsc::unbounded_channel();
        {
            let mut m = self.lock_memory();
            m.fast = Some(tx);
            m.hooks = Some(hook_tx);
            if m.account.is_none() {
                m.account = queue.account();
            }
        }
        tokio::join!(
            self.receive(queue, shutdown.clone())
                .instrument(tracing::info_span!("intake")),
            futures_util::future::join_all(away.iter().map(|q| {
                self.receive(q.as_ref(), shutdown.clone())
                    .instrument(tracing::info_span!("intake", queue = "away"))
            })),
            self.renew_loop(shutdown.clone())
                .instrument(tracing::info_span!("leases")),
            self.listen_loop(shutdown.clone())
                .instrument(tracing::info_span!("leases")),
            self.hook_loop(hook_rx, shutdown.clone())
                .instrument(tracing::info_span!("hooks")),
            self.reconcile_loop(rx, shutdown)
        );
        {
            let mut m = self.lock_memory();
            m.fast = None;
            m.hooks = None;
        }
        self.leave().await;
    }

    async fn receive(&self, queue: &dyn EventQueue, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => break,
                b = queue.receive() => b,
            };
            let messages = match batch {
                Ok(m) => {
                    failures = 0;
                    m
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!("receiving events failed: {e}");
                    tokio::select! {
                        () = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff(failures, Duration::from_secs(30))) => {}
                    }
                    continue;
                }
            };
            // The messages of a batch are handled together: a wave of
            // warnings is ten at a time, not one after the other.
            futures_util::future::join_all(messages.iter().map(|m| self.intake(queue, m))).await;
            if stop.is_cancelled() {
                break;
            }
        }
    }

    /// Handles one message: deleted once handled, kept (it comes back after
    /// the visibility timeout) when handling failed.
    async fn intake(&self, queue: &dyn EventQueue, m: &spotkeeper_cloud::QueueMessage) {
        tracing::debug!(message = %m.id, "received");
        if let Some(sent) = m.sent_at_ms {
            let now_ms = self
                .clock
                .now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            self.metrics
                .queue_lag_seconds
                .set(now_ms.saturating_sub(sent) as f64 / 1000.0);
        }
        let span = tracing::info_span!("event", message = %m.id);
        match self.handle(&m.body).instrument(span).await {
            Ok(outcome) => {
                tracing::info!(message = %m.id, "{outcome:?}");
                if let Err(e) = queue.delete(&m.receipt).await {
                    tracing::warn!("deleting message {} failed: {e}", m.id);
                }
            }
            Err(e) => tracing::warn!("handling message {} failed, will retry: {e}", m.id),
        }
    }

    async fn reconcile_loop(
        &self,
        mut fast: mpsc::UnboundedReceiver<Job>,
        shutdown: CancellationToken,
    ) {
        let mut runner = Runner::new(self.config.max_tasks);
        let mut pass: Option<futures_util::future::BoxFuture<'_, Result<PassOutcome, BoxError>>> =
            Some(self.traced_pass());
        let mut started = Instant::now();
        let mut failures = 0u32;
        let mut next = Instant::now() + self.config.interval;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(job) = fast.recv() => {
                    let what = job.subject.clone();
                    let offered = runner.offer(self, job);
                    tracing::info!(?what, ?offered, "fast path: replacement handed to a task");
                }
                Some(f) = runner.next(), if !runner.is_idle() => {
                    runner.finished(self, &f);
                }
                out = async { pass.as_mut().expect("guarded").await }, if pass.is_some() => {
                    pass = None;
                    match out {
                        Ok(out) => {
                            self.reached().await;
                            self.state_ended(EventKind::PassFailed.as_str());
                            self.pass_done(true, started);
                            failures = 0;
                            let mut stale = false;
                            for job in out.jobs {
                                stale |= runner.offer(self, job) == tasks::Offered::Stale;
                            }
                            // A task finished while the pass observed: look again soon.
                            if stale {
                                self.wake.notify_one();
                            }
                            next = Instant::now() + self.config.interval;
                        }
                        Err(e) => {
                            failures += 1;
                            let pause = backoff(failures, MAX_BACKOFF.max(self.config.interval));
                            let what = format!(
                                "reconcile pass failed ({failures} in a row), next in {}: {e}",
                                humantime::format_duration(Duration::from_secs(pause.as_secs().max(1)))
                            );
                            tracing::warn!("{what}");
                            self.unreachable(&format!("a reconcile pass failed: {e}")).await;
                            self.record_change(EventKind::PassFailed.as_str(), boxes::failure_reason(&e), None, EventKind::PassFailed, &what)
                                .await;
                            // Counted once recorded: who sees the failure
                            // counted finds its event.
                            self.pass_done(false, started);
                            next = Instant::now() + pause;
                        }
                    }
                }
                // Events and registrations wake a pass, unless passes are failing
                // (then the backoff decides; the fast path does not need a pass).
                _ = self.wake.notified(), if pass.is_none() && failures == 0 => {
                    started = Instant::now();
                    pass = Some(self.traced_pass());
                }
                _ = tokio::time::sleep_until(next), if pass.is_none() => {
                    started = Instant::now();
                    pass = Some(self.traced_pass());
                }
            }
        }
    }
}
