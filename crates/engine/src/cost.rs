//! What spot saved (`spotkeeper cost`, `GET /api/cost`): per box and pool,
//! instance-hours by market, what they cost (for spot instances the price
//! the daemon recorded in effect, integrated over each instance's run), what
//! the same hours would have cost on-demand (the AWS Price List, cached in
//! the state store, or `[cost] on_demand` in the config), and the savings;
//! per offering (type × zone), the interruptions seen and the spot hours
//! between them.
//!
//! The arithmetic ([`compute`]) is pure; [`report`] gathers its inputs.

use std::collections::BTreeMap;

use serde::Serialize;
use spotkeeper_cloud::{Cloud, Market, Offering};

use crate::config::Config;
use crate::store::{PriceSample, SeenInstance, Store, StoreError};

/// A cached on-demand price is asked again after this long (seconds).
const ON_DEMAND_FRESH: i64 = 7 * 24 * 3600;

/// One instance's run inside the report's window.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Instance id.
    pub instance: String,
    /// `box NAME`, `pool NAME`, or `other`.
    pub subject: String,
    /// Instance type.
    pub instance_type: String,
    /// Zone, if known.
    pub zone: Option<String>,
    /// Whether it ran as spot.
    pub spot: bool,
    /// Unix seconds, clipped to the window.
    pub start: i64,
    /// Unix seconds, clipped to the window.
    pub end: i64,
}

impl Run {
    /// The run of a seen instance inside `[since, until]`, if any: from its
    /// launch (else first seen) to when it was first seen going away (else
    /// last seen).
    pub fn of(i: &SeenInstance, since: i64, until: i64) -> Option<Self> {
        let start = i.launched_at.unwrap_or(i.first_seen).max(since);
        let end = i.ended_at.unwrap_or(i.last_seen).min(until);
        (end > start).then(|| Run {
            instance: i.instance_id.clone(),
            subject: match (&i.box_name, &i.pool) {
                (Some(b), _) => format!("box {b}"),
                (None, Some(p)) => format!("pool {p}"),
                (None, None) => "other".to_owned(),
            },
            instance_type: i.instance_type.clone(),
            zone: i.zone.clone(),
            spot: i.market == Market::Spot,
            start,
            end,
        })
    }

    fn hours(&self) -> f64 {
        (self.end - self.start) as f64 / 3600.0
    }
}

/// Money and hours of one box or pool (or the total).
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Line {
    /// `box NAME`, `pool NAME`, or `total`.
    pub subject: String,
    /// Spot instance-hours.
    pub spot_hours: f64,
    /// On-demand instance-hours.
    pub on_demand_hours: f64,
    /// What it cost (USD); `None` when a price is unknown.
    pub cost: Option<f64>,
    /// What the same hours would have cost on-demand (USD); `None` when unknown.
    pub on_demand_cost: Option<f64>,
    /// `on_demand_cost - cost`.
    pub savings: Option<f64>,
    /// Savings as a percentage of `on_demand_cost`.
    pub savings_percent: Option<f64>,
    /// A box's interruptions (warnings and notices acted on, drills too).
    pub interruptions: usize,
    /// Seconds from each interruption to the box being ready again, summed
    /// (one still recovering counts to the window's end).
    pub down_seconds: i64,
    /// The last recovery's seconds, if one completed.
    pub last_recovery_seconds: Option<i64>,
    /// Savings beside availability, in words ([`Line::describe`]).
    pub summary: String,
}

impl Line {
    /// The downtime in whole minutes, rounded up.
    pub fn down_minutes(&self) -> i64 {
        (self.down_seconds + 59) / 60
    }

    /// "saved $41.20 (68 %), down 7 min over 3 interruptions".
    pub fn describe(&self) -> String {
        let saved = match (self.savings, self.savings_percent) {
            (Some(s), Some(p)) => format!("saved ${s:.2} ({p:.0} %)"),
            (Some(s), None) => format!("saved ${s:.2}"),
            _ => "savings unknown".to_owned(),
        };
        if self.interruptions == 0 {
            return saved;
        }
        let minutes = self.down_minutes();
        let over = match self.interruptions {
            1 => "1 interruption".to_owned(),
            n => format!("{n} interruptions"),
        };
        format!("{saved}, down {minutes} min over {over}")
    }
}

/// Each box's downtime from its recorded events (`(box, kind, at)` in
/// order): an interruption opens an outage, the next `replaced` closes it.
pub fn downtime(
    events: &[(String, String, i64)],
    until: i64,
) -> BTreeMap<String, (usize, i64, Option<i64>)> {
    let mut open: BTreeMap<&str, i64> = BTreeMap::new();
    let mut out: BTreeMap<String, (usize, i64, Option<i64>)> = BTreeMap::new();
    for (b, kind, at) in events {
        if kind == "replaced" {
            if let Some(from) = open.remove(b.as_str()) {
                let e = out.entry(b.clone()).or_default();
                e.1 += at - from;
                e.2 = Some(at - from);
            }
        } else if !open.contains_key(b.as_str()) {
            open.insert(b, *at);
            out.entry(b.clone()).or_default().0 += 1;
        }
    }
    for (b, from) in open {
        out.entry(b.to_owned()).or_default().1 += until - from;
    }
    out
}

/// Interruptions of one offering.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OfferingLine {
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Spot instance-hours run in it.
    pub spot_hours: f64,
    /// Spot interruption warnings seen.
    pub interruptions: usize,
    /// Spot hours per interruption (the mean time between them); `None` without one.
    pub hours_between: Option<f64>,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Window start (unix seconds).
    pub since: i64,
    /// Window end (unix seconds).
    pub until: i64,
    /// Per box and pool, by name.
    pub lines: Vec<Line>,
    /// All of them.
    pub total: Line,
    /// Per region the instances ran in (a box that failed over spends in
    /// two): hours, cost and savings, by region name.
    pub regions: Vec<Line>,
    /// Per offering that ran spot or was interrupted.
    pub offerings: Vec<OfferingLine>,
    /// On-demand USD/hour used per type (`None`: unknown).
    pub on_demand_prices: BTreeMap<String, Option<f64>>,
}

/// The spot price integrated over `[start, end]` (USD): the last sample at
/// or before each moment, the first sample before any; `None` without samples.
pub fn integrate(samples: &[(i64, f64)], start: i64, end: i64) -> Option<f64> {
    let first = samples.first()?;
    let mut total = 0.0;
    let mut t = start;
    let mut price = first.1;
    for &(at, p) in samples {
        if at <= start {
            price = p;
            continue;
        }
        if at >= end {
            break;
        }
        total += price * (at - t) as f64 / 3600.0;
        t = at;
        price = p;
    }
    total += price * (end - t) as f64 / 3600.0;
    Some(total)
}

fn add(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? + b?)
}

/// The report from its inputs. `samples`: per spot offering, `(at, price)`
/// by time; `on_demand`: per type.
pub fn compute(
    runs: &[Run],
    samples: &BTreeMap<Offering, Vec<(i64, f64)>>,
    on_demand: &BTreeMap<String, Option<f64>>,
    interruptions: &[(String, i64)],
    recoveries: &[(String, String, i64)],
    since: i64,
    until: i64,
) -> Report {
    let mut lines: BTreeMap<String, Line> = BTreeMap::new();
    let mut regions: BTreeMap<String, Line> = BTreeMap::new();
    let mut offerings: BTreeMap<Offering, (f64, usize)> = BTreeMap::new();
    for r in runs {
        let od = on_demand.get(&r.instance_type).copied().flatten();
        let hours = r.hours();
        let line = lines.entry(r.subject.clone()).or_insert_with(|| Line {
            subject: r.subject.clone(),
            cost: Some(0.0),
            on_demand_cost: Some(0.0),
            ..Line::default()
        });
        let cost = if r.spot {
            line.spot_hours += hours;
            let offering = Offering::spot(&r.instance_type, r.zone.as_deref().unwrap_or_default());
            let cost = samples
                .get(&offering)
                .and_then(|s| integrate(s, r.start, r.end));
            offerings.entry(offering).or_default().0 += hours;
            cost
        } else {
            line.on_demand_hours += hours;
            od.map(|p| p * hours)
        };
        line.cost = add(line.cost, cost);
        line.on_demand_cost = add(line.on_demand_cost, od.map(|p| p * hours));
        add_to_region(&mut regions, r, cost, od.map(|p| p * hours));
    }
    for (instance, _) in interruptions {
        if let Some(r) = runs.iter().find(|r| &r.instance == instance) {
            offerings
                .entry(Offering::spot(
                    &r.instance_type,
                    r.zone.as_deref().unwrap_or_default(),
                ))
                .or_default()
                .1 += 1;
        }
    }
    add_downtime(&mut lines, recoveries, until);
    let mut lines: Vec<Line> = lines.into_values().collect();
    let total = total_of(&mut lines);
    Report {
        since,
        until,
        lines,
        total,
        regions: regions
            .into_values()
            .map(|mut l| {
                savings(&mut l);
                l.summary = l.describe();
                l
            })
            .collect(),
        offerings: offerings.into_iter().map(offering_line).collect(),
        on_demand_prices: on_demand.clone(),
    }
}

/// The lines' sum (each line's savings and summary filled in on the way).
fn total_of(lines: &mut [Line]) -> Line {
    let mut total = Line {
        subject: "total".to_owned(),
        cost: Some(0.0),
        on_demand_cost: Some(0.0),
        ..Line::default()
    };
    for l in lines {
        total.interruptions += l.interruptions;
        total.down_seconds += l.down_seconds;
        total.spot_hours += l.spot_hours;
        total.on_demand_hours += l.on_demand_hours;
        total.cost = add(total.cost, l.cost);
        total.on_demand_cost = add(total.on_demand_cost, l.on_demand_cost);
        savings(l);
        l.summary = l.describe();
    }
    savings(&mut total);
    total.summary = total.describe();
    total
}

/// A run's hours and money into its region's line (the region of its zone).
fn add_to_region(
    regions: &mut BTreeMap<String, Line>,
    r: &Run,
    cost: Option<f64>,
    on_demand_cost: Option<f64>,
) {
    let region = r
        .zone
        .as_deref()
        .map_or("unknown", crate::failover::region_of_zone);
    let line = regions.entry(region.to_owned()).or_insert_with(|| Line {
        subject: region.to_owned(),
        cost: Some(0.0),
        on_demand_cost: Some(0.0),
        ..Line::default()
    });
    if r.spot {
        line.spot_hours += r.hours();
    } else {
        line.on_demand_hours += r.hours();
    }
    line.cost = add(line.cost, cost);
    line.on_demand_cost = add(line.on_demand_cost, on_demand_cost);
}

fn offering_line(
    (offering, (spot_hours, interruptions)): (Offering, (f64, usize)),
) -> OfferingLine {
    OfferingLine {
        instance_type: offering.instance_type,
        zone: offering.zone,
        spot_hours,
        interruptions,
        hours_between: (interruptions > 0).then(|| spot_hours / interruptions as f64),
    }
}

/// Each box's downtime into its line (a line of its own when it ran nothing
/// in the window).
fn add_downtime(
    lines: &mut BTreeMap<String, Line>,
    recoveries: &[(String, String, i64)],
    until: i64,
) {
    for (b, (n, down, last)) in downtime(recoveries, until) {
        let line = lines.entry(format!("box {b}")).or_insert_with(|| Line {
            subject: format!("box {b}"),
            cost: Some(0.0),
            on_demand_cost: Some(0.0),
            ..Line::default()
        });
        line.interruptions = n;
        line.down_seconds = down;
        line.last_recovery_seconds = last;
    }
}

fn savings(l: &mut Line) {
    l.savings = match (l.on_demand_cost, l.cost) {
        (Some(od), Some(c)) => Some(od - c),
        _ => None,
    };
    l.savings_percent = match (l.savings, l.on_demand_cost) {
        (Some(s), Some(od)) if od > 0.0 => Some(100.0 * s / od),
        _ => None,
    };
}

/// The on-demand price of a type: the config's, else the cache's (a week),
/// else the Price List's (cached); unknown when none answers.
async fn on_demand_price(
    cloud: &dyn Cloud,
    store: &Store,
    config: &Config,
    region: &str,
    instance_type: &str,
) -> Result<Option<f64>, StoreError> {
    if let Some(p) = config.on_demand_prices.get(instance_type) {
        return Ok(Some(*p));
    }
    let fresh_after = crate::store::unix_now() - ON_DEMAND_FRESH;
    if let Some(cached) = store
        .cached_on_demand(region, instance_type, fresh_after)
        .await?
    {
        return Ok(cached);
    }
    let now = crate::store::unix_now();
    match cloud.on_demand_price(instance_type).await {
        Ok(p) => {
            store.cache_on_demand(region, instance_type, p, now).await?;
            Ok(p)
        }
        Err(e) => {
            // Unknown for an hour (no permission, no answer): the dashboard
            // refreshes often, and a failing call each time would slow it.
            tracing::warn!("the on-demand price of {instance_type} is unknown: {e}");
            store
                .cache_on_demand(region, instance_type, None, now - ON_DEMAND_FRESH + 3600)
                .await?;
            Ok(None)
        }
    }
}

/// How far back the interruption record is weighed (seconds): the ranking
/// of boxes and the risk of pools' offerings.
pub const HISTORY: i64 = 30 * 24 * 3600;

/// Per offering (type, zone): the spot hours this owner ran there and the
/// interruptions it handled there, over `[since, until]` (what the ranking
/// of [`crate::rank`] weighs).
pub async fn offering_history(
    store: &Store,
    owner: &str,
    since: i64,
    until: i64,
) -> Result<BTreeMap<Offering, (f64, usize)>, StoreError> {
    // Both reads at once (the pool has connections to spare): a warning's
    // replacement waits on them before its launch.
    let owned = store.for_owner(owner);
    let (seen, interruptions) =
        tokio::try_join!(owned.runs_since(since), owned.interruptions_since(since))?;
    let runs: Vec<Run> = seen
        .iter()
        .filter_map(|i| Run::of(i, since, until))
        .collect();
    let report = compute(
        &runs,
        &BTreeMap::new(),
        &BTreeMap::new(),
        &interruptions,
        &[],
        since,
        until,
    );
    Ok(report
        .offerings
        .into_iter()
        .map(|o| {
            (
                Offering::spot(&o.instance_type, &o.zone),
                (o.spot_hours, o.interruptions),
            )
        })
        .collect())
}

/// The report for this owner over `[since, until]`.
pub async fn report(
    cloud: &dyn Cloud,
    store: &Store,
    config: &Config,
    since: i64,
    until: i64,
) -> Result<Report, StoreError> {
    let region = cloud.region().to_owned();
    let runs: Vec<Run> = store
        .for_owner(&config.owner)
        .runs_since(since)
        .await?
        .iter()
        .filter_map(|i| Run::of(i, since, until))
        .collect();
    let mut samples: BTreeMap<Offering, Vec<(i64, f64)>> = BTreeMap::new();
    // The types that ran only, not every offering the daemon sampled.
    let types: std::collections::BTreeSet<&str> =
        runs.iter().map(|r| r.instance_type.as_str()).collect();
    for t in types {
        for PriceSample {
            instance_type,
            zone,
            at,
            price,
        } in store.price_samples_of(t, since).await?
        {
            samples
                .entry(Offering::spot(instance_type, zone))
                .or_default()
                .push((at, price));
        }
    }
    let mut on_demand = BTreeMap::new();
    for r in &runs {
        if !on_demand.contains_key(&r.instance_type) {
            let p = on_demand_price(cloud, store, config, &region, &r.instance_type).await?;
            on_demand.insert(r.instance_type.clone(), p);
        }
    }
    let interruptions = store
        .for_owner(&config.owner)
        .interruptions_since(since)
        .await?;
    let recoveries = store
        .for_owner(&config.owner)
        .recoveries_since(since)
        .await?;
    Ok(compute(
        &runs,
        &samples,
        &on_demand,
        &interruptions,
        &recoveries,
        since,
        until,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(instance: &str, subject: &str, spot: bool, zone: &str, start: i64, end: i64) -> Run {
        Run {
            instance: instance.into(),
            subject: subject.into(),
            instance_type: "t3.micro".into(),
            zone: Some(zone.into()),
            spot,
            start,
            end,
        }
    }

    #[test]
    fn the_price_in_effect_is_integrated_as_a_step_function() {
        // 0.01 until 1 h, then 0.02: two hours from 0 cost 0.01 + 0.02.
        let s = [(0, 0.01), (3600, 0.02)];
        assert!((integrate(&s, 0, 7200).expect("known") - 0.03).abs() < 1e-12);
        // Before the first sample, the first price.
        let s = [(3600, 0.02)];
        assert!((integrate(&s, 0, 7200).expect("known") - 0.04).abs() < 1e-12);
        // A sample after the end does not count.
        let s = [(0, 0.01), (9000, 0.5)];
        assert!((integrate(&s, 1800, 5400).expect("known") - 0.01).abs() < 1e-12);
        assert_eq!(integrate(&[], 0, 10), None);
    }

    #[test]
    fn hours_cost_and_savings_per_subject_and_offering() {
        let runs = [
            run("i-1", "box dev", true, "us-east-1a", 0, 7200),
            run("i-2", "box dev", true, "us-east-1b", 7200, 10800),
            run("i-3", "pool builders", false, "us-east-1a", 0, 3600),
        ];
        let samples = BTreeMap::from([
            (
                Offering::spot("t3.micro", "us-east-1a"),
                vec![(0, 0.003), (3600, 0.004)],
            ),
            (Offering::spot("t3.micro", "us-east-1b"), vec![(0, 0.005)]),
        ]);
        let od = BTreeMap::from([("t3.micro".to_owned(), Some(0.0104))]);
        let r = compute(&runs, &samples, &od, &[("i-1".into(), 7000)], &[], 0, 10800);
        let dev = &r.lines[0];
        assert_eq!(dev.subject, "box dev");
        assert!((dev.spot_hours - 3.0).abs() < 1e-12);
        // 0.003 + 0.004 + 0.005; on-demand 3 × 0.0104.
        assert!((dev.cost.expect("cost") - 0.012).abs() < 1e-12);
        assert!((dev.on_demand_cost.expect("od") - 0.0312).abs() < 1e-12);
        assert!((dev.savings.expect("savings") - 0.0192).abs() < 1e-12);
        assert!((dev.savings_percent.expect("%") - 61.538_461_538_461_54).abs() < 1e-9);
        let pool = &r.lines[1];
        assert!((pool.on_demand_hours - 1.0).abs() < 1e-12);
        assert_eq!(pool.savings, Some(0.0));
        assert!((r.total.cost.expect("total") - 0.0224).abs() < 1e-12);
        assert_eq!(r.offerings.len(), 2);
        assert_eq!(r.offerings[0].interruptions, 1);
        assert_eq!(r.offerings[0].hours_between, Some(2.0));
        assert_eq!(r.offerings[1].hours_between, None);

        // An unknown on-demand price makes the money unknown, not zero.
        let r = compute(&runs, &samples, &BTreeMap::new(), &[], &[], 0, 10800);
        assert_eq!(r.lines[0].on_demand_cost, None);
        assert_eq!(r.lines[0].savings, None);
        assert!(r.lines[0].cost.is_some(), "spot cost is still known");
        assert_eq!(r.lines[1].cost, None, "an on-demand run without its price");
    }

    #[test]
    fn a_box_that_failed_over_spends_in_two_regions() {
        let runs = [
            run("i-1", "box dev", true, "us-east-1a", 0, 3600),
            run("i-2", "box dev", true, "us-west-2b", 3600, 10800),
        ];
        let samples = BTreeMap::from([
            (Offering::spot("t3.micro", "us-east-1a"), vec![(0, 0.003)]),
            (Offering::spot("t3.micro", "us-west-2b"), vec![(0, 0.005)]),
        ]);
        let od = BTreeMap::from([("t3.micro".to_owned(), Some(0.0104))]);
        let r = compute(&runs, &samples, &od, &[], &[], 0, 10800);
        let regions: Vec<&str> = r.regions.iter().map(|l| l.subject.as_str()).collect();
        assert_eq!(regions, ["us-east-1", "us-west-2"]);
        assert!((r.regions[0].cost.expect("east") - 0.003).abs() < 1e-12);
        assert!((r.regions[1].spot_hours - 2.0).abs() < 1e-12);
        assert!((r.regions[1].cost.expect("west") - 0.010).abs() < 1e-12);
        assert!(r.regions[1].savings.is_some());
        assert_eq!(crate::failover::region_of_zone("us-west-2b"), "us-west-2");
        assert_eq!(
            crate::failover::region_of_zone("ap-southeast-2c"),
            "ap-southeast-2"
        );
    }

    #[test]
    fn downtime_runs_from_each_interruption_to_the_box_being_ready_again() {
        let e = |b: &str, k: &str, at: i64| (b.to_owned(), k.to_owned(), at);
        let events = [
            e("dev", "spot-interruption", 100),
            e("dev", "rebalance", 110),
            e("dev", "replaced", 190),
            e("web", "replaced", 200),
            e("dev", "spot-interruption", 1000),
            e("dev", "replaced", 1300),
            e("db", "state-change", 5000),
        ];
        let d = downtime(&events, 5600);
        // dev: two outages (the rebalance inside the first is the same one).
        assert_eq!(d["dev"], (2, 90 + 300, Some(300)));
        // A replacement without an interruption (a first launch) is no outage.
        assert!(!d.contains_key("web"));
        // Still recovering: counted to the window's end.
        assert_eq!(d["db"], (1, 600, None));

        let mut r = compute(
            &[],
            &BTreeMap::new(),
            &BTreeMap::new(),
            &[],
            &events,
            0,
            5600,
        );
        let dev = r
            .lines
            .iter_mut()
            .find(|l| l.subject == "box dev")
            .expect("dev");
        dev.savings = Some(41.2);
        dev.savings_percent = Some(68.0);
        assert_eq!(
            dev.describe(),
            "saved $41.20 (68 %), down 7 min over 2 interruptions"
        );
        assert_eq!(r.total.interruptions, 3);
    }

    #[test]
    fn runs_are_clipped_to_the_window_and_end_when_first_seen_going_away() {
        let seen = SeenInstance {
            instance_id: "i-1".into(),
            box_name: Some("dev".into()),
            pool: None,
            instance_type: "t3.micro".into(),
            zone: Some("us-east-1a".into()),
            market: Market::Spot,
            state: "terminated".into(),
            first_seen: 100,
            last_seen: 9000,
            launched_at: Some(50),
            ended_at: Some(5000),
        };
        let r = Run::of(&seen, 0, 10_000).expect("ran");
        assert_eq!((r.start, r.end), (50, 5000));
        let r = Run::of(&seen, 1000, 2000).expect("ran");
        assert_eq!((r.start, r.end), (1000, 2000));
        assert_eq!(Run::of(&seen, 6000, 7000), None);
    }
}
