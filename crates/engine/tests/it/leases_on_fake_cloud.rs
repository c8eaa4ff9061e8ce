//! Leases between daemons on one store, in-process on FakeCloud: a second
//! daemon gets its share; a daemon that stops renewing has its boxes taken
//! over once its leases expire on the daemons' clock (tokio's, advanced
//! here, not waited for); a daemon that stops cleanly hands them over at
//! once; only a box's holder replaces it. Runs on SQLite, and on PostgreSQL
//! in `scripts/test`'s second pass.

use crate::common;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use spotkeeper_engine::boxes::Timing;
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::leases::FLEET;
use spotkeeper_engine::daemon::{Clock, Daemon};

const TIMING: Timing = Timing {
    poll: Duration::from_millis(5),
    running_timeout: Duration::from_secs(5),
    stop_timeout: Duration::from_secs(5),
};
const LEASE: Duration = Duration::from_secs(20);

fn config(boxes: usize) -> Config {
    let mut text =
        String::from("owner = \"tester\"\n[daemon]\ninterval = \"10s\"\nlease = \"20s\"\n");
    for i in 0..boxes {
        text.push_str(&format!(
            "[box.b{i}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nready = {{ check = \"none\" }}\n"
        ));
    }
    config::parse(Path::new("t.toml"), &text).expect("valid")
}

fn all(boxes: usize) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = (0..boxes).map(|i| format!("box:b{i}")).collect();
    s.insert(FLEET.to_owned());
    s
}

/// A FakeCloud region and a store with `boxes` boxes registered, their
/// config, and a lock directory.
async fn registered(
    boxes: usize,
) -> (
    spotkeeper_cloud::fake::FakeCloud,
    spotkeeper_engine::store::Store,
    tempfile::TempDir,
    Config,
) {
    let (cloud, store, locks) = common::world().await;
    let cfg = config(boxes);
    for name in cfg.boxes.keys() {
        store
            .for_owner("tester")
            .register_box(name, "up", None)
            .await
            .expect("register");
    }
    (cloud, store, locks, cfg)
}

/// Daemon `id` on them.
fn daemon<'a>(
    (cloud, store, locks, cfg): &'a (
        spotkeeper_cloud::fake::FakeCloud,
        spotkeeper_engine::store::Store,
        tempfile::TempDir,
        Config,
    ),
    id: &str,
) -> Daemon<'a> {
    Daemon::new(cloud, store, cfg, locks.path())
        .with_id(id)
        .with_timing(TIMING)
}

/// Moves the daemons' clock (tokio's) forward by `by` without waiting.
async fn later(by: Duration) {
    // Paused only around the jump: the store's pools have timeouts of their
    // own that a paused clock would fire while the database answers.
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn a_second_daemon_gets_its_share_and_a_silent_ones_boxes_are_taken_over_after_the_lease() {
    let world = registered(4).await;
    let (cloud, store) = (&world.0, &world.1);
    let (a, b) = (daemon(&world, "a"), daemon(&world, "b"));
    // Alone, a holds everything and launches every box.
    a.reconcile().await.expect("a's pass");
    assert_eq!(a.held(), all(4));
    assert_eq!(common_live(cloud), 4);
    // b joins: nothing is free yet; a gives back what is over its share
    // (5 subjects / 2 daemons → 3), b takes it.
    b.reconcile().await.expect("b's pass");
    assert!(b.held().is_empty(), "{:?}", b.held());
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    let (ha, hb) = (a.held(), b.held());
    assert_eq!((ha.len(), hb.len()), (3, 2), "{ha:?} {hb:?}");
    assert!(ha.is_disjoint(&hb));
    assert_eq!(ha.union(&hb).cloned().collect::<BTreeSet<_>>(), all(4));
    assert!(ha.contains(FLEET), "the chores stay with a: {ha:?}");
    assert_eq!(common_live(cloud), 4, "nobody launched twice");

    // a goes silent. Before its lease runs out b takes nothing of a's.
    later(LEASE - Duration::from_secs(5)).await;
    b.reconcile().await.expect("b's pass");
    assert_eq!(b.held(), hb);
    // After it, b takes everything over (a is no longer alive either).
    later(Duration::from_secs(6)).await;
    b.reconcile().await.expect("b's pass");
    assert_eq!(b.held(), all(4));
    let body = b.metrics().render();
    assert!(
        body.contains("spotkeeper_lease_takeovers_total 3"),
        "{}",
        body.lines()
            .filter(|l| l.contains("lease"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(body.contains("spotkeeper_leases_held 5"));
    let takeovers = store
        .for_owner("tester")
        .events(None, 100)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "lease-takeover")
        .count();
    assert_eq!(takeovers, 3);
    // a wakes up: its renewal keeps nothing, its pass acts on nothing.
    a.reconcile().await.expect("a's pass");
    assert!(a.held().is_empty() || a.held().is_disjoint(&b.held()));
    assert_eq!(common_live(cloud), 4);
}

#[tokio::test]
async fn a_daemon_that_stops_cleanly_hands_its_boxes_over_at_once() {
    let world = registered(2).await;
    let (a, b) = (daemon(&world, "a"), daemon(&world, "b"));
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    assert!(b.held().is_empty());
    a.leave().await;
    assert!(a.held().is_empty());
    b.reconcile().await.expect("b's pass");
    assert_eq!(b.held(), all(2), "no waiting for the lease");
}

#[tokio::test]
async fn a_warning_for_a_box_another_daemon_holds_dooms_it_and_the_holder_replaces_it() {
    let world = registered(2).await;
    let cloud = &world.0;
    let (a, b) = (daemon(&world, "a"), daemon(&world, "b"));
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    let held_by_a: Vec<String> = a
        .held()
        .into_iter()
        .filter_map(|s| s.strip_prefix("box:").map(str::to_owned))
        .collect();
    let theirs = held_by_a.first().expect("a holds a box").clone();
    let old = cloud
        .all_instances()
        .into_iter()
        .find(|i| i.state.is_live() && i.tag("spotkeeper:box") == Some(theirs.as_str()))
        .expect("live");
    let warning = common::event(
        "spot-interruption-warning.json",
        old.id.as_str(),
        "held-elsewhere-1",
    );
    // b receives the warning: it dooms the instance, does not launch.
    let handled = b.handle(&warning).await.expect("handled");
    assert!(
        format!("{handled:?}").contains("holding its lease"),
        "{handled:?}"
    );
    assert_eq!(common_live(cloud), 2, "b launched nothing");
    // a's next pass replaces it (the doom is in the store).
    a.reconcile().await.expect("a's pass");
    let now: Vec<_> = cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.state.is_live() && i.tag("spotkeeper:box") == Some(theirs.as_str()))
        .collect();
    assert!(now.iter().any(|i| i.id != old.id), "replaced: {now:?}");
    // The same event again, to either daemon: a duplicate.
    let again = a.handle(&warning).await.expect("handled");
    assert_eq!(format!("{again:?}"), "Duplicate");
}

fn common_live(cloud: &spotkeeper_cloud::fake::FakeCloud) -> usize {
    cloud
        .all_instances()
        .iter()
        .filter(|i| i.state.is_live())
        .count()
}

#[tokio::test]
async fn a_daemon_that_cannot_reach_aws_lets_its_boxes_go_to_one_that_can() {
    let world = registered(4).await;
    let cloud = &world.0;
    let (a, b) = (daemon(&world, "a"), daemon(&world, "b"));
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    assert_eq!((a.held().len(), b.held().len()), (3, 2));
    // a's passes fail (its AWS does not answer: the error is queued for its
    // pass's first describe); b's do not.
    let a_fails = || async {
        cloud.fail_next("DescribeInstances", "RequestLimitExceeded");
        assert!(a.reconcile().await.is_err(), "a's AWS does not answer");
    };
    a_fails().await;
    // One failing pass is not being cut off: a keeps its share for now.
    assert_eq!(a.held().len(), 3);
    // A third of a lease after its first unanswered pass, still failing: a
    // lets go at its next claim, and b takes everything at its next pass.
    later(LEASE / 3).await;
    a_fails().await;
    assert!(a.held().is_empty(), "{:?}", a.held());
    b.reconcile().await.expect("b's pass");
    assert_eq!(b.held(), all(4), "b holds every box and the chores");
    a_fails().await;
    let events = world
        .1
        .for_owner("tester")
        .events(None, 100)
        .await
        .expect("events");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == "leases-released" && e.message.contains("cannot reach AWS"))
            .count(),
        1,
        "said once: {events:?}"
    );
    assert_eq!(common_live(cloud), 4, "nobody launched twice");
    // AWS answers a again: it is a daemon like the others once more (it
    // says it is alive, b gives back what is over its share, a takes it).
    for _ in 0..2 {
        a.reconcile().await.expect("a's pass");
        b.reconcile().await.expect("b's pass");
    }
    a.reconcile().await.expect("a's pass");
    let (held_a, held_b) = (a.held(), b.held());
    let mut shares = [held_a.len(), held_b.len()];
    shares.sort();
    assert_eq!(
        shares,
        [2, 3],
        "a takes its share again: {held_a:?} {held_b:?}"
    );
    assert!(held_a.is_disjoint(&held_b), "{held_a:?} {held_b:?}");
}

#[tokio::test]
async fn a_daemon_whose_clock_runs_ahead_takes_no_lease_that_is_live_by_the_database_clock() {
    let world = registered(3).await;
    let a = daemon(&world, "a");
    // b's host clock is ten minutes ahead: by it, a's leases ran out long
    // ago. Expiry is the database's to say.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(600);
    let b = daemon(&world, "b").with_clock(Clock::starting_at(ahead));
    a.reconcile().await.expect("a's pass");
    assert_eq!(a.held(), all(3));
    b.reconcile().await.expect("b's pass");
    assert!(b.held().is_empty(), "b took live leases: {:?}", b.held());
    // The usual rebalance still happens: a gives back, b takes.
    a.reconcile().await.expect("a's pass");
    b.reconcile().await.expect("b's pass");
    assert_eq!((a.held().len(), b.held().len()), (2, 2));
    assert!(a.held().is_disjoint(&b.held()));
    assert_eq!(common_live(&world.0), 3, "nobody launched twice");
}

#[tokio::test]
async fn a_rebalance_never_hands_over_a_box_whose_replacement_is_in_flight() {
    let world = registered(3).await;
    let (cloud, store) = (&world.0, &world.1);
    let (a, b) = (daemon(&world, "a"), daemon(&world, "b"));
    a.reconcile().await.expect("a's pass");
    assert_eq!(a.held(), all(3));
    // b2 loses its instance; a's replacement of it hangs in RunInstances.
    let lost = cloud
        .all_instances()
        .into_iter()
        .find(|i| i.tag("spotkeeper:box") == Some("b2"))
        .expect("b2's instance");
    cloud.set_state(&lost.id, spotkeeper_cloud::InstanceState::Terminated);
    cloud.set_delay("RunInstances", Duration::from_secs(5));
    let (pass, released) = tokio::join!(a.reconcile(), async {
        // The replacement is in flight once its intent is recorded (the
        // first launch's intent stays open, naming the lost instance, until
        // the replacement closes it: that one does not count).
        spotkeeper_testkit::eventually_async(
            Duration::from_secs(10),
            Duration::from_millis(5),
            || async {
                let intent = store
                    .for_owner("tester")
                    .open_intent("b2")
                    .await
                    .expect("intent");
                intent
                    .is_some_and(|i| i.instance_id.as_deref() != Some(lost.id.as_str()))
                    .then_some(())
            },
            || "no replacement started".to_owned(),
        )
        .await;
        // b joins; a renews and gives back what is over its share (2 of
        // 4), but not b2, whose task runs.
        b.reconcile().await.expect("b's pass");
        let claim = a.renew().await.expect("a renews");
        assert!(a.held().contains("box:b2"), "{:?}", a.held());
        later(Duration::from_secs(6)).await;
        claim.released
    });
    pass.expect("a's pass");
    assert_eq!(released, ["box:b1", "box:b0"], "the idle boxes went");
    b.reconcile().await.expect("b's pass");
    assert_eq!(b.held(), ["box:b0", "box:b1"].map(String::from).into());
    // Once the task is over, b2 may move like any other subject.
    assert_eq!(common_live(cloud), 3, "b2 replaced once");
}

/// Pool `workers` (kept at one instance by its minimum) in `with`, not in
/// the other config; box b0 in both.
fn config_pool(with: bool) -> Config {
    let mut text = String::from(
        "owner = \"tester\"\n[daemon]\ninterval = \"10s\"\nlease = \"20s\"\n\
         [box.b0]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nready = { check = \"none\" }\n",
    );
    if with {
        text.push_str(
            "[pool.workers]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ { type = \"t3.micro\", capacity = 1 } ]\n\
             min_capacity = 1\nmax_capacity = 2\ndemand = { http = \"http://127.0.0.1:9/jobs\" }\n",
        );
    }
    config::parse(Path::new("t.toml"), &text).expect("valid")
}

struct NoJobs;

#[async_trait::async_trait]
impl spotkeeper_engine::pools::demand::DemandReader for NoJobs {
    async fn pending(&self, _: &spotkeeper_engine::pools::Demand) -> Result<u64, String> {
        Ok(0)
    }
}

/// A daemon `id` on `world`'s cloud and store, with `config`.
fn daemon_with<'a>(
    world: &'a (
        spotkeeper_cloud::fake::FakeCloud,
        spotkeeper_engine::store::Store,
        tempfile::TempDir,
        Config,
    ),
    config: &'a Config,
    id: &str,
) -> Daemon<'a> {
    Daemon::new(&world.0, &world.1, config, world.2.path())
        .with_id(id)
        .with_timing(TIMING)
        .with_demand(Box::new(NoJobs))
}

fn workers_live(cloud: &spotkeeper_cloud::fake::FakeCloud) -> usize {
    cloud
        .all_instances()
        .iter()
        .filter(|i| i.state.is_live() && i.tag("spotkeeper:pool") == Some("workers"))
        .count()
}

#[tokio::test]
async fn a_daemon_behind_on_its_config_holding_the_fleet_lease_deletes_and_terminates_nothing() {
    let world = registered(0).await;
    world
        .1
        .for_owner("tester")
        .register_box("b0", "up", None)
        .await
        .expect("register");
    let (old, new) = (config_pool(false), config_pool(true));
    // The old config ran first; the new one adds pool `workers`, and b runs
    // it alone for a while (its fleet chores note the pool).
    let a = daemon_with(&world, &old, "a");
    a.reconcile().await.expect("a's pass");
    a.leave().await;
    let b = daemon_with(&world, &new, "b");
    b.reconcile().await.expect("b's pass");
    assert_eq!(workers_live(&world.0), 1);
    // a comes back with its stale copy and ends up with the fleet chores
    // while b runs the pool.
    b.leave().await;
    a.reconcile().await.expect("a's pass");
    for _ in 0..2 {
        b.reconcile().await.expect("b's pass");
        a.reconcile().await.expect("a's pass");
    }
    assert!(a.held().contains(FLEET), "{:?}", a.held());
    assert!(b.held().contains("pool:workers"), "{:?}", b.held());
    // Long past the orphans' grace: a records no deletion of the pool its
    // config lacks, so nothing is terminated.
    for _ in 0..3 {
        later(spotkeeper_engine::daemon::ORPHAN_GRACE).await;
        a.reconcile().await.expect("a's pass");
        b.reconcile().await.expect("b's pass");
    }
    assert!(a.held().contains(FLEET), "{:?}", a.held());
    assert_eq!(
        workers_live(&world.0),
        1,
        "the pool b runs kept its instance"
    );
    assert!(
        world
            .1
            .for_owner("tester")
            .deleted_pools()
            .await
            .expect("deleted")
            .is_empty(),
        "nothing recorded as deleted"
    );
    let events = world
        .1
        .for_owner("tester")
        .events(None, 200)
        .await
        .expect("events");
    let said: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "config-behind")
        .collect();
    assert_eq!(said.len(), 1, "said once: {said:?}");
    assert!(
        said[0].message.contains("daemon a runs an older config"),
        "{said:?}"
    );
}

#[tokio::test]
async fn a_pool_removed_from_the_config_is_deleted_only_once_every_live_daemon_agrees() {
    let world = registered(0).await;
    let store = &world.1;
    store
        .for_owner("tester")
        .register_box("b0", "up", None)
        .await
        .expect("register");
    let (old, new) = (config_pool(true), config_pool(false));
    // The config with the pool ran before; the new one removes it. b, on
    // the new one, starts alone and holds the fleet chores.
    let subjects = ["box:b0", "pool:workers"].map(String::from);
    store
        .for_owner("tester")
        .record_config(&old.fingerprint, &subjects, 0, 0)
        .await
        .expect("the old config");
    let b = daemon_with(&world, &new, "b");
    b.reconcile().await.expect("b's pass");
    // a still runs the old config, and the pool.
    let a = daemon_with(&world, &old, "a");
    for _ in 0..3 {
        a.reconcile().await.expect("a's pass");
        b.reconcile().await.expect("b's pass");
    }
    assert!(b.held().contains(FLEET), "{:?}", b.held());
    assert!(a.held().contains("pool:workers"), "{:?}", a.held());
    assert_eq!(workers_live(&world.0), 1);
    assert!(
        store
            .for_owner("tester")
            .deleted_pools()
            .await
            .expect("deleted")
            .is_empty(),
        "a live daemon's config still has it"
    );
    // a is updated (it stops): no live config wants the pool any more. The
    // removal is agreed, recorded, and its instance goes after the grace.
    a.leave().await;
    b.reconcile().await.expect("b's pass");
    assert_eq!(
        store
            .for_owner("tester")
            .deleted_pools()
            .await
            .expect("deleted"),
        ["workers"]
    );
    later(spotkeeper_engine::daemon::ORPHAN_GRACE).await;
    b.reconcile().await.expect("b's pass");
    assert_eq!(
        workers_live(&world.0),
        0,
        "the removed pool's instance went"
    );
}
