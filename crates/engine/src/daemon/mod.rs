//! `spotkeeper serve`: keeps the managed boxes and pools alive.
//!
//! A level-triggered reconciler in the sense of kube-rs' `Controller`:
//! - **intake** ([`intake`]) long-polls the event queue; a spot warning
//!   dooms the instance, marks its offering, and hands the box's replacement
//!   to the task runner at once (the fast path), launched from the last
//!   observation;
//! - **a pass** observes once (instances, requests, prices, the state file),
//!   decides per box with a pure function ([`plan_box`]) and per pool, runs
//!   the steps that answer at once, and hands the slow ones to the runner;
//!   it never trusts why it was woken, and never plans on a partial view;
//! - **tasks** ([`tasks`]): launches with their waits (running, ready
//!   check, volumes, DNS), images, the way back to spot and pool passes run
//!   beside the passes and beside each other, one per box or pool at a
//!   time, at most `[daemon] max_tasks` at once. A pass never waits on one
//!   box; boxes and pools never wait for each other.
//!
//! Every AWS call is bounded by the SDK client's timeouts and retries; a
//! failing pass is retried after a backoff with jitter. Shutdown drops
//! whatever is in flight: intents were written before every launch, so the
//! next daemon resumes from AWS and the state file.

mod boxes;
mod failover;
mod fenced;
pub mod health;
mod hooks;
mod intake;
pub mod leases;
mod marks;
mod observation;
mod pools;
pub mod replicas;
mod run;
pub mod seen;
mod settle;
pub mod tasks;

use spotkeeper_cloud::prelude::*;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use spotkeeper_cloud::{Cloud, ImageId, Instance, InstanceId, Market, Offering, SpotPrice};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

pub use self::boxes::{BoxFacts, SETTLE_AGAIN_AFTER, Step, plan_box};
pub use self::intake::Handled;
pub use self::marks::{Clock, Expiring, backoff};
pub use self::observation::{BoxIndex, Observation};
use self::tasks::{Job, Runner, Subject, Work};
use crate::boxes::{BoxError, Ctx, Progress, Silent, Timing};
use crate::config::Config;
use crate::event_kind::EventKind;
use crate::pools::demand::{DemandReader, LiveDemand};
use crate::pools::pass::PoolMemory;
use crate::pools::plan::OfferingKey;
use crate::store::Store;
pub use spotkeeper_cloud::{EventQueue, SqsQueue};
/// What stops the daemon and its API (`serve` cancels it at SIGTERM or SIGINT).
pub use tokio_util::sync::CancellationToken;

/// How long an interrupted (type, zone) offering is avoided: capacity that
/// was just reclaimed rarely comes back within minutes.
pub const UNAVAILABLE_FOR: Duration = Duration::from_secs(5 * 60);

/// Instances of a pool that no longer exists, and a box's duplicate
/// instances, are terminated once this old (a launch racing a deletion or
/// another `up` gets time to be seen as what it is).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(5 * 60);

/// An instance marked as going away (a rebalance with `replace`, say) is
/// terminated after this long once a replacement runs, even if that
/// replacement never passed its ready check: two instances must not run for
/// one box for ever.
pub const DOOMED_BOUND: Duration = Duration::from_secs(30 * 60);

/// How long a replacement this daemon launched is known without an
/// observation listing it (a pass lists it long before, unless AWS or the
/// passes fail meanwhile).
const LAUNCHED_KEPT: Duration = Duration::from_secs(10 * 60);

/// How often the state file is pruned of what is older than the retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The longest pause between two failing passes: long enough not to hammer
/// a throttling API, short enough that a recovered one is used soon.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

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

/// What the daemon remembers between passes (one lock: every access is a
/// few map operations, never held across an await).
#[derive(Default)]
struct Memory {
    unavailable: Expiring<OfferingKey>,
    spot_blocked: Expiring<String>,
    warned_at: HashMap<String, Instant>,
    pools: HashMap<String, PoolMemory>,
    settled: HashMap<String, (InstanceId, Instant)>,
    image_checks: HashMap<String, SystemTime>,
    /// Where each box was last found ([`failover`]), since when its home
    /// launches fail for want of capacity, since when its home has had an
    /// offering under the ceiling (while it is away).
    located: HashMap<String, failover::Located>,
    home_failing_since: HashMap<String, Instant>,
    home_ok_since: HashMap<String, Instant>,
    /// When each box's replicas are looked at next ([`replicas`]).
    replica_checks: HashMap<String, SystemTime>,
    images: HashMap<String, ImageId>,
    volumes: HashMap<
        String,
        (
            InstanceId,
            std::collections::BTreeMap<String, spotkeeper_cloud::Volume>,
        ),
    >,
    zones: Option<Vec<String>>,
    last: Option<Arc<Observation>>,
    /// Replacements this daemon launched and saw running, until an
    /// observation lists them (or for [`LAUNCHED_KEPT`]): a warning for one
    /// is acted on from here, as from the observation, without a describe.
    launched: HashMap<InstanceId, (Instance, Instant)>,
    epochs: HashMap<Subject, u64>,
    fast: Option<mpsc::UnboundedSender<Job>>,
    /// The hook loop's inbox, while [`Daemon::run`] runs.
    hooks: Option<mpsc::UnboundedSender<hooks::HookJob>>,
    /// Instances whose hook this daemon started (while they are doomed):
    /// the warning's and the pass's paths start it once.
    hooked: HashSet<InstanceId>,
    reported_unknown: HashSet<String>,
    /// What was last said of a state (`replace-failed:dev` → its reason):
    /// the same again records no event (and so sends no notification).
    said: HashMap<String, String>,
    /// Subjects whose work failed: failures in a row, and when to try again.
    failing: HashMap<Subject, (u32, Instant)>,
    /// Since when AWS has not answered this daemon: the start of the first
    /// pass whose look at AWS is still unanswered or failed (cleared when a
    /// pass reaches AWS). A hung endpoint counts from the call, not from
    /// the timeout.
    unanswered_since: Option<Instant>,
    pruned_at: Option<Instant>,
    account: Option<String>,
    /// The generation of this daemon's config, once recorded.
    config_generation: Option<i64>,
    /// The subjects whose leases this daemon holds, with their generations.
    held: std::collections::BTreeMap<String, i64>,
    /// Subjects with a task in flight: a rebalance does not hand them over.
    busy: HashSet<String>,
    subjects: Vec<String>,
}

/// The daemon.
pub struct Daemon<'a> {
    id: String,
    host: String,
    fleet: Arc<std::sync::atomic::AtomicBool>,
    /// One claim at a time (a pass's and the renewal's): a claim that read
    /// the leases before another gave one back must not say it holds it.
    claiming: tokio::sync::Mutex<()>,
    /// AWS, each change checked against the work's lease ([`crate::fence`]).
    cloud: fenced::FencedCloud<'a>,
    store: &'a Store,
    config: &'a Config,
    lock_dir: &'a std::path::Path,
    timing: Timing,
    clock: Clock,
    wake: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    demand: Box<dyn DemandReader>,
    memory: Mutex<Memory>,
    passes: watch::Sender<u64>,
    health: health::HealthState,
    seen: seen::LastSeen,
    /// Handles to the boxes' other regions ([`replicas`]).
    regions: replicas::Regions,
}

impl std::fmt::Debug for Daemon<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("owner", &self.config.owner)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// What a pass did at once, and what it left to tasks.
#[derive(Debug, Default)]
pub struct PassOutcome {
    /// Lines for the log: duplicates terminated, requests cancelled, orphans.
    pub done: Vec<String>,
    /// Work for the task runner.
    pub jobs: Vec<Job>,
}

impl<'a> Daemon<'a> {
    /// The store as this daemon's owner sees it.
    fn owned(&self) -> crate::store::OwnerStore<'a> {
        self.store.for_owner(&self.config.owner)
    }

    /// A daemon over `cloud` and `store` for the boxes of `config`.
    pub fn new(
        cloud: &'a dyn Cloud,
        store: &'a Store,
        config: &'a Config,
        lock_dir: &'a std::path::Path,
    ) -> Self {
        Self {
            id: leases::default_id(store.backend()),
            host: leases::host(),
            fleet: Arc::default(),
            claiming: tokio::sync::Mutex::new(()),
            cloud: fenced::FencedCloud::new(cloud, store),
            store,
            config,
            lock_dir,
            timing: Timing::default(),
            clock: Clock::new(),
            wake: Arc::new(Notify::new()),
            metrics: Arc::default(),
            demand: Box::new(LiveDemand::new(None)),
            memory: Mutex::new(Memory::default()),
            health: health::HealthState::default(),
            passes: watch::channel(0).0,
            seen: seen::LastSeen::default(),
            regions: replicas::Regions::default(),
        }
    }

    /// How the daemon reaches a box's other regions (replicas of its data
    /// volume); without it such boxes are not replicated (said once each).
    pub fn with_regions(mut self, connect: replicas::Connect) -> Self {
        self.regions = replicas::Regions::new(connect);
        self
    }

    /// Shares each observation with `seen` (the API's), instead of a handle
    /// of its own.
    pub fn with_seen(mut self, seen: seen::LastSeen) -> Self {
        self.seen = seen;
        self
    }

    /// The daemon's last observation (the API's boxes and pools read it).
    pub fn seen(&self) -> seen::LastSeen {
        self.seen.clone()
    }

    /// Reads pool demand with `reader` (the default reads HTTP only; `serve`
    /// passes one with the AWS handle for SQS sources, tests a fake).
    pub fn with_demand(mut self, reader: Box<dyn DemandReader>) -> Self {
        self.demand = reader;
        self
    }

    /// A handle that wakes the reconciler (the API uses it after a registration).
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The daemon's metrics (the API serves them).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// The daemon's health (`/healthz` answers from it).
    pub fn health(&self) -> health::HealthState {
        self.health.clone()
    }

    /// The daemon cannot work because AWS (or the state store) does not
    /// answer: `/healthz` says so with `why`, and one `aws-unreachable`
    /// event is recorded when it starts, not one per attempt.
    pub async fn unreachable(&self, why: &str) {
        self.metrics.aws_reachable.set(0);
        self.lock_memory()
            .unanswered_since
            .get_or_insert_with(Instant::now);
        let was = self.health.set(health::Health::Degraded(why.to_owned()));
        if !matches!(was, health::Health::Degraded(_)) {
            self.record(None, EventKind::AwsUnreachable, why).await;
        }
    }

    /// A pass reached AWS: healthy again (`aws-reachable` after an outage).
    async fn reached(&self) {
        self.metrics.aws_reachable.set(1);
        self.lock_memory().unanswered_since = None;
        self.state_ended("cut-off");
        if let health::Health::Degraded(why) = self.health.set(health::Health::Ok) {
            self.record(
                None,
                EventKind::AwsReachable,
                &format!("AWS answers again (it did not: {why})"),
            )
            .await;
        }
    }

    /// Passes finished so far (failed ones included); tests wait on it
    /// instead of sleeping.
    pub fn passes(&self) -> watch::Receiver<u64> {
        self.passes.subscribe()
    }

    /// Acts only on events of AWS account `account` (`run` takes it from
    /// the queue's URL when not set).
    pub fn with_account(self, account: Option<String>) -> Self {
        self.lock_memory().account = account;
        self
    }

    /// Calls this daemon `id` (default [`leases::default_id`]; `serve`
    /// takes [`leases::identity`]).
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Uses other waits (tests).
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Reads the time from `clock` (tests: a host whose clock is off).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// What `up` needs, for launching replacements the same way.
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            cloud: &self.cloud,
            store: self.store,
            owner: &self.config.owner,
            lock_dir: self.lock_dir,
            progress: &Log,
            timing: self.timing,
        }
    }

    fn ctx_silent(&self) -> Ctx<'_> {
        Ctx {
            progress: &Silent,
            ..self.ctx()
        }
    }

    fn lock_memory(&self) -> MutexGuard<'_, Memory> {
        // A panic elsewhere must not stop the daemon from remembering.
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spot offerings still marked unavailable (expired marks are dropped).
    pub fn unavailable(&self) -> HashSet<Offering> {
        self.unavailable_at(Instant::now())
    }

    /// Spot offerings still marked unavailable at `now`.
    pub fn unavailable_at(&self, now: Instant) -> HashSet<Offering> {
        self.lock_memory()
            .unavailable
            .active(now)
            .into_iter()
            .filter(|o| o.market == Market::Spot)
            .collect()
    }

    /// Records an event when the state it reports changes: `key` names the
    /// state (`replace-failed:dev`), `now` is what it is now (a failure's
    /// kind); the same state again, pass after pass, records nothing (no
    /// event, no notification, only a debug line).
    async fn record_change(
        &self,
        key: &str,
        now: &str,
        box_name: Option<&str>,
        kind: EventKind,
        message: &str,
    ) {
        if self.news(key, now) {
            self.record(box_name, kind, message).await;
        } else {
            tracing::debug!(box_name, kind = kind.as_str(), "{message} (said already)");
        }
    }

    /// Whether the state `key` is `now` for the first time (it is
    /// remembered as `now` from here on).
    fn news(&self, key: &str, now: &str) -> bool {
        let before = self
            .lock_memory()
            .said
            .insert(key.to_owned(), now.to_owned());
        before.as_deref() != Some(now)
    }

    /// The state `key` ended: the next time it comes is news again.
    fn state_ended(&self, key: &str) {
        self.lock_memory().said.remove(key);
    }

    /// `subject`'s work failed again: it waits before the next try, twice
    /// as long each time (with jitter), up to the failing-pass cap.
    fn failed(&self, subject: &Subject) {
        let cap = MAX_BACKOFF.max(self.config.interval);
        let mut m = self.lock_memory();
        let entry = m
            .failing
            .entry(subject.clone())
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        entry.1 = Instant::now() + backoff(entry.0, cap);
    }

    /// `subject`'s work succeeded: no more waiting.
    fn recovered(&self, subject: &Subject) {
        self.lock_memory().failing.remove(subject);
    }

    /// Whether `subject` is waiting after failures (a pass does not retry it yet).
    fn backing_off(&self, subject: &Subject) -> bool {
        self.lock_memory()
            .failing
            .get(subject)
            .is_some_and(|(_, next)| *next > Instant::now())
    }

    async fn record(&self, box_name: Option<&str>, kind: EventKind, message: &str) {
        tracing::info!(box_name, kind = kind.as_str(), "{message}");
        if let Err(e) = self.owned().record_event(box_name, kind, message).await {
            tracing::warn!("cannot record an event in the state file: {e}");
        }
    }

    fn epoch(&self, subject: &Subject) -> u64 {
        self.lock_memory().epochs.get(subject).copied().unwrap_or(0)
    }

    fn advance_epoch(&self, subject: &Subject) {
        *self
            .lock_memory()
            .epochs
            .entry(subject.clone())
            .or_insert(0) += 1;
    }

    fn fast_sender(&self) -> Option<mpsc::UnboundedSender<Job>> {
        self.lock_memory().fast.clone()
    }

    fn last_observation(&self) -> Option<Arc<Observation>> {
        self.lock_memory().last.clone()
    }

    /// The region's zones, read once: they do not change under a daemon.
    async fn region_zones(&self) -> Result<Vec<String>, BoxError> {
        if let Some(z) = self.lock_memory().zones.clone() {
            return Ok(z);
        }
        let z = self.cloud.zones().await?;
        self.lock_memory().zones = Some(z.clone());
        Ok(z)
    }

    /// Spot prices of every spot box's types in the zones they may use, in
    /// one read, for the fast path. Boxes in subnets are left out
    /// (their launch asks AWS).
    async fn box_prices(
        &self,
        specs: &[crate::config::BoxSpec],
    ) -> Result<(Vec<SpotPrice>, Vec<String>), BoxError> {
        let spot: Vec<&crate::config::BoxSpec> = specs
            .iter()
            .filter(|s| s.market == Market::Spot && s.subnets.is_empty())
            .collect();
        if spot.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let region = if spot.iter().any(|s| s.launch.zones.is_none()) {
            self.region_zones().await?
        } else {
            Vec::new()
        };
        let mut types: Vec<String> = spot
            .iter()
            .flat_map(|s| s.instance_types.iter().cloned())
            .collect();
        types.sort();
        types.dedup();
        let mut zones: Vec<String> = spot
            .iter()
            .flat_map(|s| s.launch.zones.clone().unwrap_or_else(|| region.clone()))
            .collect();
        zones.sort();
        zones.dedup();
        Ok((self.cloud.spot_prices(&types, &zones).await?, region))
    }

    /// The managed boxes with their specs (config file, else stored); the
    /// ones without a readable spec are reported and left alone.
    async fn managed_specs(&self) -> Result<Vec<crate::config::BoxSpec>, BoxError> {
        let mut specs = Vec::new();
        for managed in self.owned().managed_boxes().await? {
            let name = managed.name.as_str();
            let key = format!("box-spec:{name}");
            match crate::desired::box_spec(self.config, name, managed.spec.as_deref()) {
                Ok(Some(s)) => {
                    self.state_ended(&key);
                    specs.push(s);
                }
                Err(m) => {
                    let what = format!("stored box is refused or does not parse: {m}");
                    self.record_change(&key, &what, Some(name), EventKind::BadBox, &what)
                        .await
                }
                Ok(None) => {
                    let what = "managed, but not in the config file: left alone";
                    self.record_change(&key, what, Some(name), EventKind::UnknownBox, what)
                        .await
                }
            }
        }
        Ok(specs)
    }

    /// Keeps the prices a pass read, for the price charts and `cost` (a
    /// failure is said and does not stop the pass).
    pub(crate) async fn sample_prices(&self, prices: &[spotkeeper_cloud::SpotPrice]) {
        if let Err(e) = self
            .store
            .record_prices(prices, crate::store::unix_now())
            .await
        {
            tracing::warn!("keeping the spot prices read failed: {e}");
        }
    }

    /// One pass: observe, plan every box and pool, run the prompt steps;
    /// returns the work for tasks. It never waits on a box's launch, ready
    /// check, image or volume.
    pub async fn pass(&self) -> Result<PassOutcome, BoxError> {
        let specs = self.managed_specs().await?;
        let (pools, unreadable) = self.pools_and_unreadable().await?;
        // Only what this daemon holds a lease on (all of it when alone).
        let mut subjects: Vec<String> = specs
            .iter()
            .map(|s| Subject::Box(s.name.clone()).to_string())
            .collect();
        subjects.extend(
            pools
                .iter()
                .map(|p| Subject::Pool(p.name.clone()).to_string()),
        );
        subjects.push(Subject::Fleet.to_string());
        self.claim(&subjects).await?;
        let specs: Vec<_> = specs
            .into_iter()
            .filter(|s| self.holds(&Subject::Box(s.name.clone())))
            .collect();
        let fleet = self.holds(&Subject::Fleet);
        if fleet {
            self.prune_if_due().await;
        } else {
            // The fleet holder asks as it collects; every daemon says so.
            self.config_behind().await?;
        }
        self.lock_memory()
            .unanswered_since
            .get_or_insert_with(Instant::now);
        let mut obs = self.observe(fleet).await?;
        self.lock_memory().unanswered_since = None;
        // What a slow look at AWS let go meanwhile is not planned (and the
        // fences refuse it anyway).
        let mut specs = specs;
        specs.retain(|s| self.holds(&Subject::Box(s.name.clone())));
        let fleet = fleet && self.holds(&Subject::Fleet);
        // Only the fast path needs them: without, launches ask AWS first.
        match self.box_prices(&specs).await {
            Ok((prices, zones)) => {
                self.sample_prices(&prices).await;
                obs.prices = prices;
                obs.zones = zones;
            }
            Err(e) => tracing::warn!("reading the boxes' spot prices failed: {e}"),
        }
        let obs = Arc::new(obs);
        {
            let mut m = self.lock_memory();
            m.last = Some(obs.clone());
            m.launched.retain(|id, (_, at)| {
                at.elapsed() < LAUNCHED_KEPT && !obs.instances.iter().any(|i| &i.id == id)
            });
            m.hooked.retain(|id| obs.doomed.contains(id));
        }
        self.seen.set(SystemTime::now(), obs.clone());
        let mut out = PassOutcome::default();
        if fleet {
            out.done.extend(
                self.fenced(&Subject::Fleet, self.finish_stops(&obs))
                    .await?,
            );
        }
        self.plan_boxes(&specs, &obs, &mut out).await?;
        let (done, jobs) = self.reconcile_pools(&obs, pools, unreadable, fleet).await?;
        out.done.extend(done);
        out.jobs.extend(jobs);
        Ok(out)
    }

    /// Plans every box held: its stop job when one is open (nothing else
    /// for it meanwhile), else its prompt steps and its tasks.
    async fn plan_boxes(
        &self,
        specs: &[crate::config::BoxSpec],
        obs: &Observation,
        out: &mut PassOutcome,
    ) -> Result<(), BoxError> {
        let stopping: HashSet<String> = self.owned().open_stops().await?.into_iter().collect();
        for spec in specs {
            let subject = Subject::Box(spec.name.clone());
            if stopping.contains(&spec.name) {
                // Its stop job, to the end; nothing else for it meanwhile.
                if !self.backing_off(&subject) {
                    out.jobs.push(Job {
                        epoch: Some(obs.epoch(&subject)),
                        subject,
                        work: Work::Stop { spec: spec.clone() },
                    });
                }
                continue;
            }
            let step = self.plan_and_step(spec, obs);
            let (done, work) = match self.fenced(&subject, step).await {
                Ok(x) => x,
                Err(e) if self.stopped_by_fence(Some(&spec.name), &e).await => continue,
                Err(e) => {
                    self.record(Some(&spec.name), EventKind::StepFailed, &e.to_string())
                        .await;
                    continue;
                }
            };
            out.done.extend(done);
            out.jobs.extend(work.into_iter().map(|work| {
                let work = match work {
                    // The fast path's knowledge serves a pass's launch too.
                    Work::Replace { spec, known: None } => {
                        let known = self.known(&spec, obs);
                        Work::Replace { spec, known }
                    }
                    w => w,
                };
                Job {
                    subject: subject.clone(),
                    epoch: Some(obs.epoch(&subject)),
                    work,
                }
            }));
        }
        Ok(())
    }

    /// Forgets what is older than `[daemon] retention`, at most hourly.
    async fn prune_if_due(&self) {
        let due = self
            .lock_memory()
            .pruned_at
            .is_none_or(|at| at.elapsed() >= PRUNE_EVERY);
        if !due {
            return;
        }
        self.lock_memory().pruned_at = Some(Instant::now());
        let before = crate::store::unix_seconds(self.clock.now() - self.config.retention);
        let sinks: Vec<String> = self.config.notify.iter().map(|s| s.name.clone()).collect();
        let pruned = async {
            Ok::<u64, crate::store::StoreError>(
                self.owned().prune(before).await?
                    + self.owned().prune_cursors(&sinks, before).await?,
            )
        };
        match pruned.await {
            Ok(0) => {}
            Ok(n) => tracing::info!("pruned {n} rows older than the retention"),
            Err(e) => tracing::warn!("pruning the state file failed: {e}"),
        }
    }

    /// Live instances a `stop` (or `up`'s duplicate check) tagged
    /// `spotkeeper:stopped` but could not terminate (its terminate call
    /// failed, or it died in between) are terminated now: the tag is the
    /// evidence that they were meant to go.
    async fn finish_stops(&self, obs: &Observation) -> Result<Vec<String>, BoxError> {
        let left: Vec<InstanceId> = obs
            .instances
            .iter()
            .filter(|i| {
                i.state.is_live() && i.tag(spotkeeper_cloud::model::tags::STOPPED).is_some()
            })
            .map(|i| i.id.clone())
            .collect();
        if left.is_empty() {
            return Ok(Vec::new());
        }
        self.cloud.terminate(&left).await?;
        let ids: Vec<&str> = left.iter().map(InstanceId::as_str).collect();
        let what = format!("terminated {}: stopped, but still running", ids.join(" "));
        self.record(None, EventKind::StopFinished, &what).await;
        Ok(vec![what])
    }

    /// One pass and every task it starts, to the end. Returns what it did
    /// (replacements, duplicates, pools that changed). Any failed describe
    /// fails the pass: it never plans on a partial view.
    pub async fn reconcile(&self) -> Result<Vec<String>, BoxError> {
        let started = Instant::now();
        let out = self.pass().await;
        match &out {
            Ok(_) => self.reached().await,
            Err(e) => {
                self.unreachable(&format!("a reconcile pass failed: {e}"))
                    .await
            }
        }
        self.pass_done(out.is_ok(), started);
        let out = out?;
        let mut done = out.done;
        let mut runner = Runner::new(self.config.max_tasks);
        for job in out.jobs {
            runner.offer(self, job);
        }
        while let Some(f) = runner.next().await {
            runner.finished(self, &f);
            done.extend(f.lines.unwrap_or_default());
        }
        Ok(done)
    }

    /// A pass in its span (`pass{n=…}`): a pass's log lines are told apart
    /// from its tasks' and from the next pass's.
    fn traced_pass(&self) -> futures_util::future::BoxFuture<'_, Result<PassOutcome, BoxError>> {
        let n = *self.passes.borrow() + 1;
        Box::pin(
            async move {
                let out = self.pass().await;
                if let Ok(out) = &out {
                    out.done.iter().for_each(|d| tracing::info!("{d}"));
                }
                out
            }
            .instrument(tracing::info_span!("pass", n)),
        )
    }

    fn pass_done(&self, ok: bool, started: Instant) {
        self.metrics.pass(ok, started.elapsed().as_secs_f64());
        self.passes.send_modify(|n| *n += 1);
    }
}
