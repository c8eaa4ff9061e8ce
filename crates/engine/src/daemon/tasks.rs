//! Tracked tasks: the slow part of reconciling a box or a pool, run beside
//! the passes and beside each other.
//!
//! The rules (kube-rs' `Controller`: per-object concurrency, requeue):
//! - at most one task per box or pool at a time; work for a busy subject is
//!   dropped (the next pass plans it again if it is still needed), except
//!   that a replacement preempts a box's image, settle or back-to-spot task;
//! - at most `max_tasks` at once; the rest wait in a queue, replacements
//!   first;
//! - work planned on an observation older than the subject's last finished
//!   task is stale and dropped: what that task did is not in the
//!   observation (a launch would be repeated), and the next pass sees it;
//! - a task returns what it did or why not ([`TaskResult`]), and the runner
//!   books it: a success ends the subject's failing states and its pause, a
//!   failure is recorded (once per state when it has a reason), counted in
//!   `spotkeeper_task_failures_total`, and may make the subject wait.
//!
//! Tasks are futures polled by the daemon's own loop, not spawned: dropping
//! the runner (shutdown) stops them all at once, and what they left half
//! done is resumed by the next daemon from AWS and the state file.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::Daemon;
use crate::boxes::Known;
use crate::config::BoxSpec;
use crate::fence::Fence;
use crate::pools::PoolSpec;
use crate::pools::pass::World;

pub use crate::subject::Subject;

/// The slow work of one subject.
#[derive(Debug, Clone)]
pub enum Work {
    /// Launch the box's replacement and wait for it (running, ready,
    /// volumes, DNS), then terminate the instances it replaces.
    Replace {
        /// The box.
        spec: BoxSpec,
        /// The fast path's knowledge (no describe before the launch).
        known: Option<Known>,
    },
    /// Put the running instance's volumes and DNS in place.
    Settle {
        /// The box.
        spec: BoxSpec,
        /// Its running instance.
        instance: spotkeeper_cloud::Instance,
    },
    /// Make the scheduled image if it is due.
    Image {
        /// The box.
        spec: BoxSpec,
        /// Its running instance.
        instance: spotkeeper_cloud::Instance,
    },
    /// Replace the on-demand instance with a spot one.
    BackToSpot {
        /// The box.
        spec: BoxSpec,
        /// Its on-demand instance.
        instance: spotkeeper_cloud::Instance,
    },
    /// Copy the box's data volume to its other regions if it is due.
    Replicate {
        /// The box.
        spec: BoxSpec,
    },
    /// Finish the box's stop job (asked through the API, or left half done).
    Stop {
        /// The box.
        spec: BoxSpec,
    },
    /// One pool's pass on a shared observation.
    Pool {
        /// The pool.
        spec: PoolSpec,
        /// The observation of the pass that planned it.
        world: Arc<World>,
    },
}

impl Work {
    /// The label of `spotkeeper_tasks_in_flight`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Replace { .. } => "replace",
            Self::Settle { .. } => "settle",
            Self::Image { .. } => "image",
            Self::BackToSpot { .. } => "back-to-spot",
            Self::Pool { .. } => "pool",
            Self::Stop { .. } => "stop",
            Self::Replicate { .. } => "replicate",
        }
    }

    fn urgent(&self) -> bool {
        matches!(self, Self::Replace { .. } | Self::Stop { .. })
    }

    fn preemptible(&self) -> bool {
        matches!(
            self,
            Self::Settle { .. }
                | Self::Image { .. }
                | Self::BackToSpot { .. }
                | Self::Replicate { .. }
        )
    }
}

/// What a task did: lines for the log.
#[derive(Debug, Default)]
pub struct Done(pub Vec<String>);

impl Done {
    /// A task that did one thing worth a log line.
    pub fn said(line: impl Into<String>) -> Self {
        Self(vec![line.into()])
    }
}

/// Why a task did not do its work, as the runner books it.
#[derive(Debug)]
pub enum TaskError {
    /// Nothing to say: the daemon no longer holds the subject (fenced), or
    /// the work is another's now (a stop under way), or it was said already.
    Quiet,
    /// A failure: the runner records the event (once per state when
    /// `reason` names one), counts it, and makes the subject wait when
    /// `backoff` says so.
    Failed {
        /// The event recorded.
        kind: crate::event_kind::EventKind,
        /// What went wrong.
        message: String,
        /// A short reason: the event is said once while the subject keeps
        /// failing for it (not every pass, not to every sink every pass).
        reason: Option<&'static str>,
        /// The subject waits before its next try, twice as long each time.
        backoff: bool,
    },
}

impl TaskError {
    /// A failure recorded each time, without a pause before the next try.
    pub fn failed(kind: crate::event_kind::EventKind, message: impl ToString) -> Self {
        Self::Failed {
            kind,
            message: message.to_string(),
            reason: None,
            backoff: false,
        }
    }

    /// A failure said once per `reason`, after which the subject waits.
    pub fn backing_off(
        kind: crate::event_kind::EventKind,
        reason: &'static str,
        message: impl ToString,
    ) -> Self {
        Self::Failed {
            kind,
            message: message.to_string(),
            reason: Some(reason),
            backoff: true,
        }
    }
}

/// A task's outcome.
pub type TaskResult = Result<Done, TaskError>;

/// Work for a subject, with the epoch of the observation it was planned on.
#[derive(Debug, Clone)]
pub struct Job {
    /// Whom it is for.
    pub subject: Subject,
    /// The subject's epoch when observed; `None`: not tied to an observation.
    pub epoch: Option<u64>,
    /// What to do.
    pub work: Work,
}

/// What happened to an offered job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Running now.
    Started,
    /// Waiting for a free slot.
    Queued,
    /// The subject has a task already.
    Busy,
    /// Planned before the subject's last task finished.
    Stale,
}

/// A task that ended.
#[derive(Debug)]
pub struct Finished {
    subject: Subject,
    id: u64,
    kind: &'static str,
    /// What it did; `None` when it was cancelled.
    pub lines: Option<Vec<String>>,
}

#[derive(Debug)]
struct Busy {
    id: u64,
    preemptible: bool,
    cancel: Option<oneshot::Sender<()>>,
}

/// Runs jobs as futures, one per subject, at most `limit` at once.
pub struct Runner<'f> {
    limit: usize,
    running: FuturesUnordered<BoxFuture<'f, Finished>>,
    busy: HashMap<Subject, Busy>,
    /// Jobs waiting for a slot, each with the fence it was offered under.
    queue: VecDeque<(Job, Fence)>,
    next_id: u64,
}

impl std::fmt::Debug for Runner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("limit", &self.limit)
            .field("running", &self.running.len())
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl<'f> Runner<'f> {
    /// A runner of at most `limit` tasks at once.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            running: FuturesUnordered::new(),
            busy: HashMap::new(),
            queue: VecDeque::new(),
            next_id: 0,
        }
    }

    /// Whether no task runs or waits.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.queue.is_empty()
    }

    /// Starts or queues `job` (see the module's rules). The job runs in the
    /// fence of the lease the daemon holds now on its subject; work for a
    /// subject it does not hold (any more) is stale.
    pub fn offer<'a: 'f>(&mut self, daemon: &'f Daemon<'a>, job: Job) -> Offered {
        if let Some(epoch) = job.epoch
            && daemon.epoch(&job.subject) != epoch
        {
            return Offered::Stale;
        }
        let Some(fence) = daemon.fence_for(&job.subject) else {
            return Offered::Stale;
        };
        if let Some(b) = self.busy.get_mut(&job.subject) {
            if !(job.work.urgent() && b.preemptible) {
                return Offered::Busy;
            }
            // The replacement cannot wait for an image of a box going away.
            if let Some(cancel) = b.cancel.take() {
                let _ = cancel.send(());
            }
            self.busy.remove(&job.subject);
        }
        if let Some(pos) = self
            .queue
            .iter()
            .position(|(j, _)| j.subject == job.subject)
        {
            if job.work.urgent() && !self.queue[pos].0.work.urgent() {
                self.queue.remove(pos);
            } else {
                return Offered::Busy;
            }
        }
        if self.running.len() >= self.limit {
            if job.work.urgent() {
                self.queue.push_front((job, fence));
            } else {
                self.queue.push_back((job, fence));
            }
            return Offered::Queued;
        }
        self.start(daemon, job, fence);
        Offered::Started
    }

    /// Tells the daemon which subjects have a task in flight.
    fn busy_to<'a: 'f>(&self, daemon: &'f Daemon<'a>) {
        daemon.set_busy(self.busy.keys().map(Subject::to_string).collect());
    }

    fn start<'a: 'f>(&mut self, daemon: &'f Daemon<'a>, job: Job, fence: Fence) {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel::<()>();
        let kind = job.work.kind();
        self.busy.insert(
            job.subject.clone(),
            Busy {
                id,
                preemptible: job.work.preemptible(),
                cancel: Some(tx),
            },
        );
        daemon.metrics.task_started(kind);
        self.busy_to(daemon);
        let subject = job.subject;
        // Every line a task logs names its subject and kind: a wave's
        // twenty replacements are told apart in the log.
        let span = tracing::info_span!("task", subject = %subject, kind = %kind, id);
        self.running.push(Box::pin(async move {
            let work = job.work;
            // The work and its booking (events, backoff) in the fence: a
            // task preempted before it ends books nothing.
            let run = crate::fence::scope(Some(fence), async {
                let outcome = daemon.execute(&work).await;
                daemon.book(&subject, kind, outcome).await
            })
            .instrument(span.clone());
            let lines = tokio::select! {
                lines = run => Some(lines),
                _ = rx => None,
            };
            for line in lines.iter().flatten() {
                tracing::info!(parent: &span, "{line}");
            }
            Finished {
                subject,
                id,
                kind,
                lines,
            }
        }));
    }

    /// The next task to finish; `None` when none runs (pending forever is
    /// the caller's `select!` guard's job).
    pub async fn next(&mut self) -> Option<Finished> {
        self.running.next().await
    }

    /// Books a finished task: frees its subject, advances the subject's
    /// epoch, and starts queued jobs in the freed slot.
    pub fn finished<'a: 'f>(&mut self, daemon: &'f Daemon<'a>, done: &Finished) {
        daemon.metrics.task_ended(done.kind);
        if self
            .busy
            .get(&done.subject)
            .is_some_and(|b| b.id == done.id)
        {
            self.busy.remove(&done.subject);
        }
        daemon.advance_epoch(&done.subject);
        while self.running.len() < self.limit {
            let Some((job, fence)) = self.queue.pop_front() else {
                break;
            };
            if self.busy.contains_key(&job.subject) {
                continue;
            }
            self.start(daemon, job, fence);
        }
        self.busy_to(daemon);
    }
}
