//! Leases: several daemons on one database share an owner's boxes and pools.
//!
//! Every subject — `box:NAME`, `pool:NAME`, and `fleet` (the owner-wide
//! chores: stopped instances left running, orphaned pool instances,
//! pruning, notifications) — has at most one holder at a time, recorded in
//! the database with an expiry. A daemon renews what it holds every
//! `lease / 3` and at each pass; acts only on the subjects it holds; and
//! takes a subject whose lease is free or expired. Each takes at most its
//! share (subjects ÷ live daemons, rounded up) and gives back what is over
//! it, so a second daemon gets half the work within a renewal, and when a
//! daemon dies its boxes go to the others once its leases expire. Taking
//! is one conditional upsert: of two daemons taking a lease at once, one
//! wins. Times are read from the daemon's [`Clock`](super::Clock), so tests
//! may run on tokio's paused clock.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use super::Daemon;
use crate::boxes::BoxError;
use crate::event_kind::EventKind;
use crate::store::{Backend, Lease};

/// The least time AWS must have been silent before a daemon gives its
/// leases back ([`Daemon::cut_off`]): looking at AWS takes a few calls, and
/// on a loaded AWS that may take seconds without anything being wrong.
pub const MIN_CUT_OFF: Duration = Duration::from_secs(5);

/// The subject of the owner-wide chores.
pub use crate::subject::FLEET;
use crate::subject::Subject;

/// This daemon's id. On PostgreSQL: host, process and a random part (two
/// daemons on one host, or one restarted with the same pid, are told
/// apart; a daemon that crashed has its leases taken over once they
/// expire). On a SQLite file, which lives on one machine: the host, so a
/// daemon restarted after a crash takes its leases back at once.
pub fn default_id(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => host(),
        Backend::Postgres => {
            format!(
                "{}-{}-{:04x}",
                host(),
                std::process::id(),
                fastrand::u16(..)
            )
        }
    }
}

/// The id `serve` runs under: `preferred` (`$SPOTKEEPER_DAEMON_ID`) or
/// the host name, so a daemon restarted after a crash is the same daemon
/// and takes its leases back at once. On PostgreSQL the id is locked in
/// the database for as long as the daemon runs (the returned guard): a
/// second daemon on the same host gets an id of its own, and a preferred
/// id that a running daemon holds is refused. A crashed daemon's lock goes
/// with its connection.
pub async fn identity(
    store: &crate::store::Store,
    owner: &str,
    preferred: Option<&str>,
) -> Result<(String, Option<crate::lock::BoxLock>), String> {
    if let Some(id) = preferred
        && (id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(format!(
            "daemon id {id:?} must be 1-64 letters, digits, '.', '_' or '-'"
        ));
    }
    let base = preferred.map_or_else(host, str::to_owned);
    if store.backend() == Backend::Sqlite {
        return Ok((base, None));
    }
    let lock = |id: String| async move {
        let key = format!("spotkeeper daemon {owner}/{id}");
        store
            .try_lock(&key)
            .await
            .map(|l| l.map(|l| (id, Some(l))))
            .map_err(|e| e.to_string())
    };
    if let Some(taken) = lock(base.clone()).await? {
        return Ok(taken);
    }
    if preferred.is_some() {
        return Err(format!(
            "daemon id {base:?} is in use by a running daemon (every daemon needs its own id)"
        ));
    }
    lock(default_id(Backend::Postgres))
        .await?
        .ok_or_else(|| "no free daemon id".to_owned())
}

/// The host name, for the daemons list.
pub fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What a claim changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Claim {
    /// Subjects held now.
    pub held: BTreeSet<String>,
    /// Subjects newly taken (free before).
    pub taken: Vec<String>,
    /// Subjects taken from a daemon whose lease had expired: (subject, it).
    pub taken_over: Vec<(String, String)>,
    /// Subjects given back (over this daemon's share).
    pub released: Vec<String>,
}

/// How many subjects one daemon holds at most among `live` daemons.
pub fn share(subjects: usize, live: usize) -> usize {
    subjects.div_ceil(live.max(1))
}

impl Daemon<'_> {
    /// This daemon's id (in the daemons list, the leases, `/healthz`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The subjects whose leases this daemon holds (as of its last claim).
    pub fn held(&self) -> BTreeSet<String> {
        self.lock_memory().held.keys().cloned().collect()
    }

    /// The fence of work for `subject`: this daemon and the generation it
    /// holds the subject's lease at; `None` when it does not hold it.
    pub(super) fn fence_for(&self, subject: &Subject) -> Option<crate::fence::Fence> {
        let subject = subject.to_string();
        let generation = *self.lock_memory().held.get(&subject)?;
        Some(crate::fence::Fence {
            owner: self.config.owner.clone(),
            subject,
            holder: self.id.clone(),
            generation,
            offset_ms: self.clock.offset_ms(),
        })
    }

    /// Runs `work` for `subject` in the scope of its fence: its changes to
    /// AWS are refused once another daemon holds the subject. Work for a
    /// subject this daemon does not hold runs fenced off from the start.
    pub(super) async fn fenced<F: std::future::Future>(
        &self,
        subject: &Subject,
        work: F,
    ) -> F::Output {
        let fence = self
            .fence_for(subject)
            .unwrap_or_else(|| crate::fence::Fence {
                owner: self.config.owner.clone(),
                subject: subject.to_string(),
                holder: self.id.clone(),
                generation: -1,
                offset_ms: 0,
            });
        crate::fence::scope(Some(fence), work).await
    }

    /// Says that work stopped at a fence, if `e` is that: not a failure of
    /// the box or pool (no backoff, no `*-failed` event); the daemon that
    /// holds the lease now acts on it.
    pub(super) async fn stopped_by_fence(&self, box_name: Option<&str>, e: &BoxError) -> bool {
        if !e.fenced() {
            return false;
        }
        self.metrics.fenced.inc();
        tracing::info!("{e}");
        self.record(box_name, EventKind::Fenced, &e.to_string())
            .await;
        true
    }

    /// Subjects with a task in flight (the runner says so): a rebalance
    /// keeps them until the task ends.
    pub(super) fn set_busy(&self, busy: HashSet<String>) {
        self.lock_memory().busy = busy;
    }

    /// Set while this daemon holds the `fleet` lease: notification
    /// deliverers deliver only then ([`crate::notify::Deliverer::gate`]).
    pub fn fleet_gate(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.fleet.clone()
    }

    pub(super) fn holds(&self, subject: &Subject) -> bool {
        self.lock_memory().held.contains_key(&subject.to_string())
    }

    /// Now by the database's clock (unix ms), which every daemon reads
    /// alike: whether a lease expired is never a host's clock's say.
    async fn now_ms(&self) -> Result<i64, BoxError> {
        Ok(self.store.clock_ms().await? + self.clock.offset_ms())
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// How often leases are renewed between passes.
    pub(super) fn renew_every(&self) -> Duration {
        (self.config.lease / 3).max(Duration::from_millis(200))
    }

    /// Renews this daemon's leases, gives back what is over its share, takes
    /// free and expired ones up to it, and says it is alive. `subjects` are
    /// every box and pool there is (with [`FLEET`]); the held ones are
    /// remembered for the pass and the fast path.
    /// A claim that fails (the database unreachable) forgets what was held:
    /// the leases may expire before the next one succeeds, and then another
    /// daemon acts on those boxes; this one does not in the meantime.
    pub(super) async fn claim(&self, subjects: &[String]) -> Result<Claim, BoxError> {
        let _one_at_a_time = self.claiming.lock().await;
        let claim = self.claim_now(subjects).await;
        if claim.is_err() {
            self.hold(Default::default());
        }
        claim
    }

    async fn claim_now(&self, subjects: &[String]) -> Result<Claim, BoxError> {
        let (now, lease) = (self.now_ms().await?, self.lease_ms());
        self.lock_memory().subjects = subjects.to_vec();
        if self.cut_off() {
            return self.let_go(now - lease).await;
        }
        self.record_config(now).await?;
        let held = self.held().len() as i64;
        let config = &self.config.fingerprint;
        self.owned()
            .daemon_alive(&self.id, &self.host, now, held, config)
            .await?;
        let live = self.owned().daemons(now - lease).await?.len();
        self.owned().renew_leases(&self.id, now + lease).await?;
        let leases = self.owned().leases().await?;
        let wanted: HashSet<&str> = subjects.iter().map(String::as_str).collect();
        let mut claim = Claim::default();
        let mut generations = std::collections::BTreeMap::new();
        for l in leases.iter().filter(|l| l.holder == self.id) {
            if wanted.contains(l.subject.as_str()) {
                claim.held.insert(l.subject.clone());
                generations.insert(l.subject.clone(), l.generation);
            } else {
                // A box stopped or a pool deleted: nothing to hold.
                self.owned().release_lease(&l.subject, &self.id).await?;
            }
        }
        let share = share(subjects.len(), live);
        let keep = if claim.held.len() > share {
            self.only_mine().await?
        } else {
            HashSet::new()
        };
        while claim.held.len() > share {
            let Some(give) = self.least_busy(&claim.held, &keep) else {
                break;
            };
            self.owned().release_lease(&give, &self.id).await?;
            claim.held.remove(&give);
            generations.remove(&give);
            claim.released.push(give);
        }
        for (subject, from) in candidates(subjects, &leases, &self.id, now) {
            if claim.held.len() >= share {
                break;
            }
            if let Some(generation) = self
                .owned()
                .take_lease(subject, &self.id, now, now + lease)
                .await?
            {
                claim.held.insert(subject.to_owned());
                generations.insert(subject.to_owned(), generation);
                match from {
                    Some(from) => claim.taken_over.push((subject.to_owned(), from.to_owned())),
                    None => claim.taken.push(subject.to_owned()),
                }
            }
        }
        self.claimed(&claim, generations).await;
        Ok(claim)
    }

    /// Whether AWS has not answered this daemon for a third of a lease (at
    /// least [`MIN_CUT_OFF`]): a pass hanging on a call, or passes failing.
    /// It reaches the database (it claims) but cannot act on its boxes, so
    /// it must not keep them from a daemon that can. A pass or two failing
    /// and retried within that is not being cut off. A third: the pass that
    /// notices starts at most an interval (a third of the default lease)
    /// after the outage, this daemon lets go when the third is up (the
    /// renewal loop wakes for it), and the others take the boxes at their
    /// next renewal (another third): within a lease.
    fn cut_off(&self) -> bool {
        self.until_cut_off() == Some(Duration::ZERO)
    }

    /// How long until this daemon counts as cut off from AWS, if AWS is
    /// not answering it now.
    fn until_cut_off(&self) -> Option<Duration> {
        let after = (self.config.lease / 3).max(MIN_CUT_OFF);
        self.lock_memory()
            .unanswered_since
            .map(|since| after.saturating_sub(since.elapsed()))
    }

    /// Gives every lease back and leaves the daemons list (a daemon that
    /// counts as live would keep the others' share down): the others take
    /// its boxes at their next claim. It claims again once AWS answers.
    async fn let_go(&self, stale: i64) -> Result<Claim, BoxError> {
        let had = self.held();
        self.owned().daemon_gone(&self.id, stale).await?;
        self.hold(Default::default());
        let what = format!(
            "daemon {} cannot reach AWS: it gave its {} lease(s) back until AWS answers",
            self.id,
            had.len()
        );
        self.record_change("cut-off", "cut-off", None, EventKind::LeasesReleased, &what)
            .await;
        Ok(Claim {
            released: had.into_iter().collect(),
            ..Claim::default()
        })
    }

    /// Subjects only this daemon's config names (no other live daemon's
    /// does, and none was registered through the API): given back, nobody
    /// would take them. Configs differ for a while in a rollout.
    async fn only_mine(&self) -> Result<HashSet<String>, BoxError> {
        let others: HashSet<String> = self
            .live_configs()
            .await?
            .into_iter()
            .filter(|c| c.daemon != self.id)
            .flat_map(|c| c.subjects)
            .collect();
        Ok(self
            .config_subjects()
            .into_iter()
            .filter(|s| !others.contains(s))
            .collect())
    }

    /// A held subject to give back: the last by name, the chores last of
    /// all, never one whose task is in flight (handing it over would have
    /// two daemons at work on it; the next claim after the task may), nor
    /// one in `keep` (only this daemon knows it).
    fn least_busy(&self, held: &BTreeSet<String>, keep: &HashSet<String>) -> Option<String> {
        let busy = self.lock_memory().busy.clone();
        let idle = || {
            held.iter()
                .rev()
                .filter(|s| !busy.contains(s.as_str()) && !keep.contains(s.as_str()))
        };
        idle()
            .find(|s| s.as_str() != FLEET)
            .or_else(|| idle().next())
            .cloned()
    }

    /// What this daemon acts on from now: `held`, subject → generation
    /// (the pass, the fast path, the fences, the notification gate and
    /// `spotkeeper_leases_held` read it).
    fn hold(&self, held: std::collections::BTreeMap<String, i64>) {
        self.fleet.store(
            held.contains_key(FLEET),
            std::sync::atomic::Ordering::SeqCst,
        );
        self.metrics.leases_held.set(held.len() as i64);
        self.lock_memory().held = held;
    }

    /// Remembers the claim, counts it, and records what changed hands.
    async fn claimed(&self, claim: &Claim, generations: std::collections::BTreeMap<String, i64>) {
        self.hold(generations);
        if !claim.taken.is_empty() {
            let what = format!(
                "daemon {} took {} lease(s): {}",
                self.id,
                claim.taken.len(),
                claim.taken.join(" ")
            );
            self.record(None, EventKind::LeasesTaken, &what).await;
        }
        for (subject, from) in &claim.taken_over {
            self.metrics.lease_takeovers.inc();
            let what = format!(
                "daemon {} took over {subject} from daemon {from}, whose lease expired",
                self.id
            );
            let subject = subject.parse::<Subject>().ok();
            let box_name = subject.as_ref().and_then(Subject::box_name);
            self.record(box_name, EventKind::LeaseTakeover, &what).await;
        }
        if !claim.released.is_empty() {
            let what = format!(
                "daemon {} gave back {} lease(s) over its share: {}",
                self.id,
                claim.released.len(),
                claim.released.join(" ")
            );
            self.record(None, EventKind::LeasesReleased, &what).await;
        }
    }

    /// One renewal now, as between passes (the subjects of the last pass):
    /// renews, gives back what is over this daemon's share (never a subject
    /// whose task is in flight), takes free and expired leases up to it.
    pub async fn renew(&self) -> Result<Claim, BoxError> {
        let subjects = self.lock_memory().subjects.clone();
        self.claim(&subjects).await
    }

    /// Renews and rebalances between passes; a subject taken wakes a pass.
    pub(super) async fn renew_loop(&self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            // Wakes for the moment AWS has been silent too long, too.
            let wait = match self.until_cut_off() {
                Some(left) if !left.is_zero() => {
                    self.renew_every().min(left + Duration::from_millis(10))
                }
                _ => self.renew_every(),
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
            if self.lock_memory().subjects.is_empty() {
                continue;
            }
            match self.renew().await {
                Ok(c) if !c.taken.is_empty() || !c.taken_over.is_empty() => self.wake.notify_one(),
                Ok(_) => {}
                Err(e) => tracing::warn!("renewing the leases failed: {e}"),
            }
        }
    }

    /// Wakes a pass when another daemon received a warning for a box this
    /// one holds (PostgreSQL `LISTEN`): the pass reads the doomed instance
    /// and replaces it, instead of at the next interval.
    pub(super) async fn listen_loop(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut failures = 0u32;
        loop {
            let listener = tokio::select! {
                () = shutdown.cancelled() => return,
                l = self.store.wake_listener() => l,
            };
            let mut listener = match listener {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("cannot listen for the other daemons: {e}");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(super::backoff(failures, Duration::from_secs(60))) => {}
                    }
                    continue;
                }
            };
            failures = 0;
            loop {
                let woke = tokio::select! {
                    () = shutdown.cancelled() => return,
                    w = listener.next() => w,
                };
                match woke {
                    Ok((owner, box_name))
                        if owner == self.config.owner
                            && self.holds(&Subject::Box(box_name.clone())) =>
                    {
                        tracing::info!(
                            box_name,
                            "another daemon received a warning for it: a pass now"
                        );
                        self.wake.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!("listening for the other daemons failed: {e}");
                        break;
                    }
                }
            }
        }
    }

    /// Gives every lease back at once (a clean stop): the others take the
    /// boxes at their next renewal instead of after the expiry.
    pub async fn leave(&self) {
        let now = match self.now_ms().await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!("giving the leases back failed (they expire): {e}");
                self.hold(Default::default());
                return;
            }
        };
        let stale = now - 10 * self.lease_ms();
        match self.owned().daemon_gone(&self.id, stale).await {
            Ok(()) => {
                self.record(
                    None,
                    EventKind::DaemonStopped,
                    &format!("daemon {} stopped and gave its leases back", self.id),
                )
                .await
            }
            Err(e) => tracing::warn!("giving the leases back failed (they expire): {e}"),
        }
        self.hold(Default::default());
    }
}

/// Subjects this daemon may take, free ones first, then expired ones (with
/// their last holder).
fn candidates<'s>(
    subjects: &'s [String],
    leases: &'s [Lease],
    me: &str,
    now: i64,
) -> Vec<(&'s str, Option<&'s str>)> {
    let mut free = Vec::new();
    let mut expired = Vec::new();
    for s in subjects {
        match leases.iter().find(|l| &l.subject == s) {
            None => free.push((s.as_str(), None)),
            Some(l) if l.holder != me && l.expires_at < now => {
                expired.push((s.as_str(), Some(l.holder.as_str())))
            }
            Some(_) => {}
        }
    }
    // The owner-wide chores first: somebody must always do them.
    free.sort_by_key(|(s, _)| *s != FLEET);
    free.extend(expired);
    free
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_round_up_and_never_divide_by_zero() {
        assert_eq!(share(21, 2), 11);
        assert_eq!(share(20, 2), 10);
        assert_eq!(share(5, 0), 5);
        assert_eq!(share(0, 3), 0);
    }

    #[test]
    fn free_subjects_come_first_then_expired_ones_with_their_holder() {
        let subjects: Vec<String> = ["box:a", "box:b", "box:c", FLEET].map(String::from).into();
        let lease = |s: &str, h: &str, exp| Lease {
            subject: s.into(),
            holder: h.into(),
            expires_at: exp,
            since: 0,
            generation: 1,
        };
        let leases = [
            lease("box:a", "x", 50),
            lease("box:b", "y", 500),
            lease("box:c", "me", 10),
        ];
        assert_eq!(
            candidates(&subjects, &leases, "me", 100),
            [(FLEET, None), ("box:a", Some("x"))]
        );
    }

    #[tokio::test]
    async fn a_daemon_id_is_locked_while_it_runs_and_a_second_daemon_gets_another() {
        let server = spotkeeper_testkit::Postgres::start();
        let url = crate::store::DatabaseUrl::parse(&server.url()).expect("url");
        let store = crate::store::Store::connect(&url).await.expect("store");
        let (first, guard) = identity(&store, "o", None).await.expect("first");
        assert_eq!(first, host());
        let (second, _g2) = identity(&store, "o", None).await.expect("second");
        assert_ne!(second, first, "the host's id is taken");
        assert!(second.starts_with(&host()));
        // Another owner's daemon may use the host's id.
        let (other, _g3) = identity(&store, "p", None).await.expect("other owner");
        assert_eq!(other, first);
        let (chosen, _g4) = identity(&store, "o", Some("edge-1")).await.expect("chosen");
        assert_eq!(chosen, "edge-1");
        let e = identity(&store, "o", Some("edge-1"))
            .await
            .expect_err("in use");
        assert!(e.contains("in use"), "{e}");
        let e = identity(&store, "o", Some("a b\nc"))
            .await
            .expect_err("bad id");
        assert!(e.contains("must be"), "{e}");
        // The first daemon stops (or dies): its id is free again.
        drop(guard);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (again, _g) = identity(&store, "o", None).await.expect("again");
            if again == first {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn on_sqlite_the_id_is_the_host_and_nothing_is_locked() {
        let store = crate::store::Store::memory().await.expect("store");
        let (id, guard) = identity(&store, "o", None).await.expect("id");
        assert_eq!((id, guard.is_none()), (host(), true));
    }
}
