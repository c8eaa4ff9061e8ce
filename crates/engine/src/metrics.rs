//! Prometheus metrics of the daemon, served at `GET /metrics`: interruptions,
//! replacements, launch failures by reason, time from warning to replacement
//! running, queue lag, reconcile passes and the tasks in flight.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an event counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Event kind or failure reason.
    pub kind: String,
}

/// Labels of a per-pool series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Pool name.
    pub pool: String,
}

/// Labels of a per-pool series split by market, reason …
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolKindLabel {
    /// Pool name.
    pub pool: String,
    /// Market (`spot`, `on-demand`) or failure reason.
    pub kind: String,
}

/// Labels of a per-box series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BoxLabel {
    /// Box name.
    pub r#box: String,
}

/// Labels of a notification counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// The `[[notify]]` sink's name.
    pub sink: String,
    /// `delivered` or `failed`.
    pub result: String,
}

/// Per-pool metrics.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    /// Desired capacity units.
    pub desired: Family<PoolLabel, Gauge>,
    /// Current capacity units by market (`spot`, `on-demand`, `requested`).
    pub current: Family<PoolKindLabel, Gauge>,
    /// Instances launched, by market.
    pub launches: Family<PoolKindLabel, Counter>,
    /// Failed launches, by reason.
    pub launch_failures: Family<PoolKindLabel, Counter>,
    /// Passes that could not read the demand (the pool held).
    pub demand_failures: Family<PoolLabel, Counter>,
    /// Mean spot price paid per capacity unit and hour.
    pub price_per_unit: Family<PoolLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The kinds each pool's series were made with, to take them all away
    /// when the pool goes (pools registered through the API come and go).
    series:
        std::sync::Mutex<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>>,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Events handled, by kind (`spot-interruption`, `garbage`, `duplicate` …).
    pub events: Family<KindLabel, Counter>,
    /// Replacements launched and running.
    pub replacements: Counter,
    /// Failed replacement attempts, by reason.
    pub launch_failures: Family<KindLabel, Counter>,
    /// Seconds from the warning being handled to the replacement running.
    pub warning_to_running: Histogram,
    /// Age in seconds of the newest message when received.
    pub queue_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Worker pools.
    pub pools: PoolMetrics,
    /// Reconcile passes finished, by result (`ok`, `failed`).
    pub passes: Family<KindLabel, Counter>,
    /// Seconds one reconcile pass took (observe, plan, prompt steps).
    pub pass_seconds: Histogram,
    /// Box and pool tasks running, by kind (`replace`, `settle`, `image`, `back-to-spot`, `pool`).
    pub tasks: Family<KindLabel, Gauge>,
    /// Box and pool tasks that failed, by kind.
    pub task_failures: Family<KindLabel, Counter>,
    /// Pools whose instances are left alone, by why (`unreadable-pool`: a
    /// stored spec that does not parse; `unknown-pool`: no spec, no deletion).
    pub left_alone: Family<KindLabel, Gauge>,
    /// Notification attempts, by sink and result.
    pub notifications: Family<SinkLabel, Counter>,
    /// Leases this daemon holds (boxes, pools, the fleet chores).
    pub leases_held: Gauge,
    /// Leases taken from a daemon whose lease had expired.
    pub lease_takeovers: Counter,
    /// 1 while the daemon reaches AWS (its last pass did), 0 while it does not.
    pub aws_reachable: Gauge,
    /// Steps not taken because this daemon no longer held the lease.
    pub fenced: Counter,
    /// Per box: seconds from its last warning to its replacement being up.
    pub last_recovery_seconds: Family<BoxLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Per box: what spot saved against on-demand over the last 30 days
    /// (USD), refreshed when scraped ([`Metrics::savings_due`]).
    pub savings_dollars: Family<BoxLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// When the savings were last computed, and whether that is under way.
    savings_at: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl PoolMetrics {
    /// The series of a pool labelled with `kind` (market, reason …).
    pub fn kind(&self, pool: &str, kind: &str) -> PoolKindLabel {
        self.series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(pool.to_owned())
            .or_default()
            .insert(kind.to_owned());
        PoolKindLabel {
            pool: pool.to_owned(),
            kind: kind.to_owned(),
        }
    }

    /// Drops every series of the pools not in `keep` (deleted, or run by
    /// another daemon now), so the families do not grow with pool names.
    pub fn keep_only(&self, keep: &std::collections::HashSet<&str>) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = series
            .keys()
            .filter(|p| !keep.contains(p.as_str()))
            .cloned()
            .collect();
        for pool in gone {
            let label = PoolLabel { pool: pool.clone() };
            self.desired.remove(&label);
            self.demand_failures.remove(&label);
            self.price_per_unit.remove(&label);
            for kind in series.remove(&pool).unwrap_or_default() {
                let label = PoolKindLabel {
                    pool: pool.clone(),
                    kind,
                };
                self.current.remove(&label);
                self.launches.remove(&label);
                self.launch_failures.remove(&label);
            }
        }
    }

    /// Registers the pools' metrics.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "pool_desired_units",
            "Desired capacity units of each pool",
            self.desired.clone(),
        );
        registry.register(
            "pool_current_units",
            "Current capacity units of each pool, by market (requested: open spot requests)",
            self.current.clone(),
        );
        registry.register(
            "pool_launches",
            "Pool instances launched, by market",
            self.launches.clone(),
        );
        registry.register(
            "pool_launch_failures",
            "Failed pool launches, by reason",
            self.launch_failures.clone(),
        );
        registry.register(
            "pool_demand_failures",
            "Pool passes that could not read the demand and held the pool",
            self.demand_failures.clone(),
        );
        registry.register(
            "pool_price_per_unit",
            "Mean spot price per capacity unit and hour of each pool",
            self.price_per_unit.clone(),
        );
    }
}

/// The pools left alone and the notifications sent.
fn register_upkeep(
    registry: &mut Registry,
    left_alone: &Family<KindLabel, Gauge>,
    notifications: &Family<SinkLabel, Counter>,
) {
    registry.register(
        "left_alone_pools",
        "Pools whose instances are left alone: unreadable spec, or no spec and no deletion record",
        left_alone.clone(),
    );
    registry.register(
        "notifications",
        "Notification attempts, by sink and result (delivered, failed)",
        notifications.clone(),
    );
}

/// The leases of several daemons on one database (held now, taken over),
/// and whether this one reaches AWS.
fn register_leases(registry: &mut Registry) -> (Gauge, Counter, Gauge, Counter) {
    let (held, takeovers, reachable) = (Gauge::default(), Counter::default(), Gauge::default());
    let fenced = Counter::default();
    registry.register(
        "fenced",
        "Steps not taken because this daemon no longer held the lease (another daemon took it over)",
        fenced.clone(),
    );
    registry.register(
        "aws_reachable",
        "1 while the daemon reaches AWS (its last pass did), 0 while it does not",
        reachable.clone(),
    );
    registry.register(
        "leases_held",
        "Leases this daemon holds on boxes, pools and the fleet chores",
        held.clone(),
    );
    registry.register(
        "lease_takeovers",
        "Leases taken from a daemon whose lease had expired",
        takeovers.clone(),
    );
    (held, takeovers, reachable, fenced)
}

/// A per-box gauge of fractional values.
type BoxGauge = Family<BoxLabel, Gauge<f64, std::sync::atomic::AtomicU64>>;

/// The tasks' series: in flight, failed.
fn register_tasks(
    registry: &mut Registry,
) -> (Family<KindLabel, Gauge>, Family<KindLabel, Counter>) {
    let (tasks, failures) = (Family::default(), Family::default());
    registry.register(
        "tasks_in_flight",
        "Box and pool tasks running, by kind",
        tasks.clone(),
    );
    registry.register(
        "task_failures",
        "Box and pool tasks that failed, by kind",
        failures.clone(),
    );
    (tasks, failures)
}

/// The per-box series: last recovery seconds, savings.
fn register_boxes(registry: &mut Registry) -> (BoxGauge, BoxGauge) {
    let last_recovery_seconds = Family::default();
    registry.register(
        "box_last_recovery_seconds",
        "Per box: from its last warning to its replacement being up (drills included)",
        last_recovery_seconds.clone(),
    );
    let savings = Family::default();
    registry.register(
        "box_savings_dollars",
        "Per box: what spot saved against on-demand over the last 30 days (USD)",
        savings.clone(),
    );
    (last_recovery_seconds, savings)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("spotkeeper");
        let events = Family::<KindLabel, Counter>::default();
        let replacements = Counter::default();
        let launch_failures = Family::<KindLabel, Counter>::default();
        // 5 s … ~21 min: a replacement inside the two-minute warning is the goal.
        let warning_to_running = Histogram::new([
            5.0, 10.0, 20.0, 40.0, 80.0, 120.0, 180.0, 300.0, 600.0, 1280.0,
        ]);
        let queue_lag_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register("events", "EC2 events handled, by kind", events.clone());
        registry.register(
            "replacements",
            "Replacement instances launched and running",
            replacements.clone(),
        );
        registry.register(
            "launch_failures",
            "Failed replacement attempts, by reason",
            launch_failures.clone(),
        );
        registry.register(
            "warning_to_running_seconds",
            "From the warning to the replacement running",
            warning_to_running.clone(),
        );
        registry.register(
            "queue_lag_seconds",
            "Age of the newest event when received",
            queue_lag_seconds.clone(),
        );
        let passes = Family::<KindLabel, Counter>::default();
        // 5 ms … 80 s: a pass is a few describes; minutes mean AWS hangs.
        let pass_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 15),
        );
        registry.register(
            "reconcile_passes",
            "Reconcile passes finished, by result",
            passes.clone(),
        );
        registry.register(
            "reconcile_pass_seconds",
            "Time one reconcile pass took (the tasks it started not included)",
            pass_seconds.clone(),
        );
        let (tasks, task_failures) = register_tasks(&mut registry);
        let (left_alone, notifications) = (Family::default(), Family::default());
        register_upkeep(&mut registry, &left_alone, &notifications);
        let pools = PoolMetrics::default();
        pools.register(&mut registry);
        let (leases_held, lease_takeovers, aws_reachable, fenced) = register_leases(&mut registry);
        let (last_recovery_seconds, savings_dollars) = register_boxes(&mut registry);
        Self {
            last_recovery_seconds,
            savings_dollars,
            savings_at: std::sync::Mutex::new(None),
            aws_reachable,
            fenced,
            leases_held,
            lease_takeovers,
            registry,
            pools,
            passes,
            pass_seconds,
            tasks,
            task_failures,
            left_alone,
            notifications,
            events,
            replacements,
            launch_failures,
            warning_to_running,
            queue_lag_seconds,
        }
    }
}

impl Metrics {
    /// Counts one notification attempt.
    pub fn notification(&self, sink: &str, delivered: bool) {
        self.notifications
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
                result: if delivered { "delivered" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// Counts one event of `kind`.
    pub fn event(&self, kind: &str) {
        self.events
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a failed launch.
    pub fn launch_failure(&self, reason: &str) {
        self.launch_failures
            .get_or_create(&KindLabel {
                kind: reason.to_owned(),
            })
            .inc();
    }

    /// A task of `kind` started.
    pub fn task_started(&self, kind: &str) {
        self.tasks
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A task of `kind` failed (its event is recorded, maybe once per state).
    pub fn task_failed(&self, kind: &str) {
        self.task_failures
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A task of `kind` ended.
    pub fn task_ended(&self, kind: &str) {
        self.tasks
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .dec();
    }

    /// The gauge of pools left alone for `why`.
    pub fn left_alone(&self, why: &str) -> impl std::ops::Deref<Target = Gauge> + '_ {
        self.left_alone.get_or_create(&KindLabel {
            kind: why.to_owned(),
        })
    }

    /// A pass ended after `seconds`, `ok` or not.
    pub fn pass(&self, ok: bool, seconds: f64) {
        self.passes
            .get_or_create(&KindLabel {
                kind: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
        self.pass_seconds.observe(seconds);
    }

    /// True (and the computation marked as under way) when the savings are
    /// older than `every` and none is under way: one scrape starts it,
    /// concurrent ones and those that follow within `every` do not. The
    /// daemon passes its interval: the runs the savings come from change
    /// once a pass. [`Metrics::savings_finished`] ends it.
    pub fn savings_due(&self, every: std::time::Duration) -> bool {
        let mut at = self.savings_at.lock().unwrap_or_else(|e| e.into_inner());
        match *at {
            Some((_, true)) => false,
            Some((t, false)) if t.elapsed() < every => false,
            _ => {
                *at = Some((std::time::Instant::now(), true));
                true
            }
        }
    }

    /// The computation [`Metrics::savings_due`] started ended (well or not).
    pub fn savings_finished(&self) {
        let mut at = self.savings_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, _)) = *at {
            *at = Some((t, false));
        }
    }

    /// Sets each box's savings (USD) to `lines`' and drops boxes not in it.
    pub fn set_savings(&self, lines: &[(String, f64)]) {
        self.savings_dollars.clear();
        for (name, saved) in lines {
            self.savings_dollars
                .get_or_create(&BoxLabel {
                    r#box: name.clone(),
                })
                .set(*saved);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod box_label_tests {
    #[test]
    fn a_boxs_recovery_is_labelled_box() {
        let m = super::Metrics::default();
        m.last_recovery_seconds
            .get_or_create(&super::BoxLabel {
                r#box: "dev".into(),
            })
            .set(12.5);
        let text = m.render();
        assert!(
            text.contains("spotkeeper_box_last_recovery_seconds{box=\"dev\"} 12.5"),
            "{text}"
        );
    }

    #[test]
    fn savings_are_computed_at_most_once_an_interval_and_follow_the_boxes() {
        let m = super::Metrics::default();
        let (minute, now) = (
            std::time::Duration::from_secs(60),
            std::time::Duration::ZERO,
        );
        assert!(m.savings_due(minute));
        assert!(!m.savings_due(now), "one computation at a time");
        m.savings_finished();
        assert!(!m.savings_due(minute), "a second scrape at once recomputes");
        assert!(m.savings_due(now));
        m.savings_finished();
        m.set_savings(&[("dev".into(), 41.2), ("gone".into(), 1.0)]);
        m.set_savings(&[("dev".into(), 41.5)]);
        let text = m.render();
        assert!(
            text.contains("spotkeeper_box_savings_dollars{box=\"dev\"} 41.5"),
            "{text}"
        );
        assert!(!text.contains("gone"), "{text}");
    }
}
