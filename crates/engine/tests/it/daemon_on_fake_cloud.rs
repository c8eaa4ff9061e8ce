//! The daemon's event handling and reconcile pass on FakeCloud: what each
//! event does, duplicates, strangers, rebalance policies, offering expiry on
//! tokio's paused clock, scheduled images.

use crate::common;
use std::path::Path;
use std::time::Duration;

use crate::common::world;
use spotkeeper_cloud::InstanceState;
use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_engine::boxes::{self, Ctx, Timing};
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::{Daemon, Handled, UNAVAILABLE_FOR};
use spotkeeper_engine::store::Store;

fn config(extra: &str) -> Config {
    let text = format!(
        "owner = \"tester\"\n[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\nmax_price = 0.02\nready = {{ check = \"none\" }}\n{extra}\n"
    );
    config::parse(Path::new("t.toml"), &text).expect("valid")
}

fn warning(kind: &str, instance: &str, id: &str) -> String {
    let file = match kind {
        "spot" => "spot-interruption-warning.json",
        "rebalance" => "rebalance-recommendation.json",
        _ => "state-change-terminated.json",
    };
    common::event(file, instance, id)
}

const TIMING: Timing = Timing {
    poll: Duration::from_millis(1),
    running_timeout: Duration::from_secs(5),
    stop_timeout: Duration::from_secs(5),
};

fn ctx<'a>(cloud: &'a FakeCloud, store: &'a Store, locks: &'a Path) -> Ctx<'a> {
    common::ctx(cloud, store, locks, TIMING)
}

/// FakeCloud, a state store, a lock directory and the config of box `dev`
/// (with `extra` lines).
async fn setup(extra: &str) -> (FakeCloud, Store, tempfile::TempDir, Config) {
    let (cloud, store, locks) = world().await;
    (cloud, store, locks, config(extra))
}

/// Box `dev` brought up; its instance.
async fn up(ctx: &Ctx<'_>, cfg: &Config) -> spotkeeper_cloud::Instance {
    boxes::up(ctx, &cfg.boxes["dev"])
        .await
        .expect("up")
        .instance
}

/// A daemon over them, with the tests' quick timing.
fn daemon<'a>(
    cloud: &'a FakeCloud,
    store: &'a Store,
    cfg: &'a Config,
    locks: &'a tempfile::TempDir,
) -> Daemon<'a> {
    Daemon::new(cloud, store, cfg, locks.path()).with_timing(TIMING)
}

/// Hands `daemon` a spot warning (event `id`) for `instance`: it must act.
async fn spot_warning(daemon: &Daemon<'_>, instance: &spotkeeper_cloud::InstanceId, id: &str) {
    let out = daemon
        .handle(&warning("spot", instance.as_str(), id))
        .await
        .expect("handled");
    assert!(matches!(out, Handled::Acted(_)), "{out:?}");
}

#[tokio::test]
async fn a_spot_warning_marks_the_offering_and_the_pass_replaces_the_box_elsewhere() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);

    spot_warning(&daemon, &first.id, "e1").await;
    assert!(
        daemon
            .unavailable()
            .contains(&spotkeeper_cloud::Offering::new(
                &first.instance_type,
                first.zone.as_deref().expect("zone"),
                spotkeeper_cloud::Market::Spot,
            ))
    );
    assert_eq!(
        daemon
            .handle(&warning("spot", first.id.as_str(), "e1"))
            .await
            .expect("dup"),
        Handled::Duplicate
    );

    // The old instance still runs (two minutes left): the pass replaces it now.
    let launched = daemon.reconcile().await.expect("pass");
    assert_eq!(launched.len(), 1, "{launched:?}");
    let live: Vec<_> = cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.state.is_live())
        .collect();
    assert_eq!(
        live.len(),
        1,
        "the warned instance was terminated once the replacement ran: {live:?}"
    );
    assert_ne!(live[0].id, first.id);
    assert_ne!(
        (live[0].instance_type.clone(), live[0].zone.clone()),
        (first.instance_type, first.zone),
        "another offering"
    );
    assert!(
        daemon.reconcile().await.expect("pass").is_empty(),
        "a second pass does nothing"
    );
}

#[tokio::test]
async fn a_spot_warning_for_an_instance_the_daemon_observed_acts_without_a_describe() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    // Before any pass there is no observation: the instance is described.
    let described = cloud.count("DescribeInstances");
    spot_warning(&daemon, &first.id, "w0").await;
    assert_eq!(cloud.count("DescribeInstances"), described + 1);
    // The pass replaces it and observes the replacement.
    daemon.reconcile().await.expect("pass");
    daemon.reconcile().await.expect("pass");
    let second = cloud
        .all_instances()
        .into_iter()
        .find(|i| i.state.is_live())
        .expect("replacement");
    // A warning for it now: acted on from the observation, no describe.
    let described = cloud.count("DescribeInstances");
    spot_warning(&daemon, &second.id, "w1").await;
    assert_eq!(cloud.count("DescribeInstances"), described, "no describe");
    // A state change says what the observation may not know: described,
    // and not believed while AWS shows the instance running.
    let out = daemon
        .handle(&warning("state", second.id.as_str(), "w2"))
        .await
        .expect("handled");
    assert!(matches!(out, Handled::Ignored(_)), "{out:?}");
    assert_eq!(cloud.count("DescribeInstances"), described + 1);
    // A warning for an instance the observation does not know: described,
    // and someone else's changes nothing.
    let out = daemon
        .handle(&warning("spot", "i-0fedcba9876543210", "w3"))
        .await
        .expect("handled");
    assert_eq!(out, Handled::NotOurs);
    assert_eq!(cloud.count("DescribeInstances"), described + 2);
}

#[tokio::test]
async fn a_spot_warning_for_the_replacement_it_just_launched_acts_without_a_describe() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon.reconcile().await.expect("pass");
    daemon
        .handle(&warning("spot", first.id.as_str(), "w0"))
        .await
        .expect("handled");
    // This pass observes before it replaces: its observation does not list
    // the replacement, which the daemon knows from launching it.
    daemon.reconcile().await.expect("pass");
    let second = cloud
        .all_instances()
        .into_iter()
        .find(|i| i.state.is_live() && i.id != first.id)
        .expect("replacement");
    let described = cloud.count("DescribeInstances");
    spot_warning(&daemon, &second.id, "w1").await;
    assert_eq!(
        cloud.count("DescribeInstances"),
        described,
        "known from its own launch: no describe"
    );
}

#[tokio::test]
async fn a_warning_handled_before_the_daemon_holds_the_box_still_starts_its_hook() {
    let (cloud, store, locks, cfg) =
        setup("on_interruption = { command = \"sync\", timeout = \"30s\" }\nagent = true").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    // No pass yet: the daemon holds no lease, so the warning only dooms the
    // instance (as at a daemon sharing the queue with the box's holder).
    spot_warning(&daemon, &first.id, "w0").await;
    let gate = |id: &spotkeeper_cloud::InstanceId| {
        cloud
            .all_instances()
            .into_iter()
            .find(|i| &i.id == id)
            .and_then(|i| i.tag(spotkeeper_engine::hook::UNTIL_TAG).map(str::to_owned))
    };
    assert_eq!(gate(&first.id), None, "no hook started by a non-holder");
    // The holder's pass starts it (the agent runs it: the gate is set).
    daemon.reconcile().await.expect("pass");
    let until: u64 = gate(&first.id)
        .expect("the pass set the hook's gate")
        .parse()
        .expect("unix seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        until > now && until <= now + 31,
        "deadline {until}, now {now}"
    );
    // Once: a second pass leaves the gate as it is.
    daemon.reconcile().await.expect("pass");
    assert_eq!(gate(&first.id), Some(until.to_string()));
}

#[tokio::test]
async fn garbage_strangers_and_ignored_rebalances_launch_nothing() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    assert!(matches!(
        daemon.handle("{not json").await.expect("handled"),
        Handled::Garbage(_)
    ));
    assert_eq!(
        daemon
            .handle(&warning("spot", "i-0fedcba9876543210", "e2"))
            .await
            .expect("handled"),
        Handled::NotOurs
    );
    assert!(matches!(
        daemon
            .handle(&warning("rebalance", first.id.as_str(), "e3"))
            .await
            .expect("handled"),
        Handled::Ignored(_)
    ));
    assert!(daemon.reconcile().await.expect("pass").is_empty());
    assert_eq!(cloud.count("RunInstances"), 1);
    let events = store
        .for_owner("tester")
        .events(None, 10)
        .await
        .expect("events");
    assert!(events.iter().any(|e| e.kind == "garbage"), "{events:?}");
}

#[tokio::test]
async fn rebalance_with_replace_starts_the_replacement_early_and_retires_the_old_one() {
    let (cloud, store, locks, cfg) = setup("on_rebalance = \"replace\"").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    assert!(matches!(
        daemon
            .handle(&warning("rebalance", first.id.as_str(), "r1"))
            .await
            .expect("handled"),
        Handled::Acted(_)
    ));
    daemon.reconcile().await.expect("pass");
    let old = cloud
        .all_instances()
        .into_iter()
        .find(|i| i.id == first.id)
        .expect("old");
    assert!(
        old.state.is_gone(),
        "terminated after the new one was ready: {:?}",
        old.state
    );
    assert_eq!(
        cloud
            .all_instances()
            .iter()
            .filter(|i| i.state.is_live())
            .count(),
        1
    );
}

#[tokio::test]
async fn a_box_lost_while_the_daemon_was_down_is_replaced_on_start_but_a_stopped_box_is_not() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    cloud.set_state(&first.id, InstanceState::Terminated);
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    assert_eq!(daemon.reconcile().await.expect("pass").len(), 1);
    boxes::stop(&ctx, &cfg.boxes["dev"], true)
        .await
        .expect("stop");
    assert!(
        daemon.reconcile().await.expect("pass").is_empty(),
        "stop is respected"
    );
}

#[tokio::test]
async fn unavailable_offerings_expire() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    let marked_at = tokio::time::Instant::now();
    daemon
        .handle(&warning("spot", first.id.as_str(), "x1"))
        .await
        .expect("handled");
    assert_eq!(
        daemon
            .unavailable_at(marked_at + UNAVAILABLE_FOR - Duration::from_secs(1))
            .len(),
        1
    );
    assert!(
        daemon
            .unavailable_at(marked_at + UNAVAILABLE_FOR + Duration::from_secs(1))
            .is_empty(),
        "back to the cheapest offering"
    );
    assert!(daemon.unavailable().is_empty(), "expired marks are dropped");
}

#[tokio::test]
async fn the_pass_makes_scheduled_images_of_healthy_boxes() {
    let (cloud, store, locks) = world().await;
    let cfg = config("images = { every = \"24h\", keep = 2 }");
    let ctx = ctx(&cloud, &store, locks.path());
    boxes::up(&ctx, &cfg.boxes["dev"]).await.expect("up");
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon.reconcile().await.expect("pass");
    assert_eq!(cloud.count("CreateImage"), 1, "no image yet: one is due");
    daemon.reconcile().await.expect("pass");
    assert_eq!(cloud.count("CreateImage"), 1, "not due again for a day");
}

#[tokio::test]
async fn when_every_offering_was_interrupted_lately_the_box_still_comes_back() {
    let (cloud, store, locks) = world().await;
    let cfg = config("zones = [\"us-east-1a\"]");
    let ctx = ctx(&cloud, &store, locks.path());
    let mut current = boxes::up(&ctx, &cfg.boxes["dev"])
        .await
        .expect("up")
        .instance;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    // Two interruptions mark both types in the only zone unavailable.
    for round in 0..3 {
        daemon
            .handle(&warning("spot", current.id.as_str(), &format!("w{round}")))
            .await
            .expect("handled");
        cloud.set_state(&current.id, InstanceState::Terminated);
        assert_eq!(
            daemon.reconcile().await.expect("pass").len(),
            1,
            "round {round}"
        );
        current = cloud
            .all_instances()
            .into_iter()
            .find(|i| i.state.is_live())
            .expect("replacement");
    }
}

#[tokio::test]
async fn without_spot_the_box_falls_back_to_on_demand_and_returns_to_spot_at_the_next_chance() {
    let (cloud, store, locks) = world().await;
    for z in ["us-east-1a", "us-east-1b"] {
        cloud.set_price("t3.micro", z, 0.5);
        cloud.set_price("t3a.micro", z, 0.5);
    }
    let cfg = config("fallback = \"on-demand\"");
    let ctx = ctx(&cloud, &store, locks.path());
    let first = boxes::up(&ctx, &cfg.boxes["dev"])
        .await
        .expect("up falls back")
        .instance;
    assert_eq!(first.market, spotkeeper_cloud::Market::OnDemand);

    let daemon = daemon(&cloud, &store, &cfg, &locks);
    assert!(
        daemon.reconcile().await.expect("pass").is_empty(),
        "spot still too dear: stays on on-demand"
    );
    assert_eq!(cloud.all_instances().len(), 1);

    cloud.set_price("t3.micro", "us-east-1a", 0.004);
    let back = daemon.reconcile().await.expect("pass");
    assert_eq!(back.len(), 1, "{back:?}");
    let live: Vec<_> = cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.state.is_live())
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].market, spotkeeper_cloud::Market::Spot);
}

#[tokio::test]
async fn a_spot_quota_error_falls_back_and_without_fallback_fails_clearly() {
    let (cloud, store, locks) = world().await;
    let ctx = ctx(&cloud, &store, locks.path());
    cloud.fail_next("RunInstances", "MaxSpotInstanceCountExceeded");
    let with = config("fallback = \"on-demand\"");
    let out = boxes::up(&ctx, &with.boxes["dev"])
        .await
        .expect("fell back");
    assert_eq!(out.instance.market, spotkeeper_cloud::Market::OnDemand);
    // Said as its own event kind, so a notification sink can be told.
    let events = store
        .for_owner("tester")
        .events(Some("dev"), 20)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "fallback" && e.message.contains("on-demand")),
        "{events:?}"
    );
    boxes::stop(&ctx, &with.boxes["dev"], true)
        .await
        .expect("stop");
    cloud.fail_next("RunInstances", "MaxSpotInstanceCountExceeded");
    let without = config("");
    let err = boxes::up(&ctx, &without.boxes["dev"])
        .await
        .expect_err("no fallback");
    assert!(
        err.to_string().contains("MaxSpotInstanceCountExceeded"),
        "{err}"
    );
}

#[tokio::test]
async fn a_duplicate_past_the_grace_period_is_terminated_and_a_stale_spot_request_cancelled() {
    use spotkeeper_cloud::model::tags;
    use spotkeeper_cloud::{
        Instance, InstanceId, Market, SpotRequest, SpotRequestId, SpotRequestState,
    };
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    let mut box_tags = std::collections::BTreeMap::new();
    box_tags.insert(tags::OWNER.to_owned(), "tester".to_owned());
    box_tags.insert(tags::BOX.to_owned(), "dev".to_owned());
    let twin = |id: &str, age: u64| Instance {
        id: InstanceId::new(id),
        state: InstanceState::Running,
        launched_at: Some(
            std::time::SystemTime::now() + Duration::from_secs(1) - Duration::from_secs(age),
        ),
        tags: box_tags.clone(),
        ..first.clone()
    };
    // A twin launched just now is left alone (a racing `up` settles it).
    cloud.insert_instance(twin("i-0000000000000fresh", 0));
    cloud.insert_spot_request(SpotRequest {
        id: SpotRequestId::new("sir-stale001"),
        state: SpotRequestState::Open,
        instance_id: None,
        instance_type: Some("t3.micro".into()),
        status: None,
        tags: box_tags.clone(),
    });
    daemon.reconcile().await.expect("pass");
    let live = |c: &FakeCloud| {
        c.all_instances()
            .into_iter()
            .filter(|i| i.state.is_live())
            .map(|i| i.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(live(&cloud).len(), 2);
    assert!(
        cloud
            .all_spot_requests()
            .iter()
            .all(|r| r.id.as_str() != "sir-stale001" || r.state == SpotRequestState::Cancelled),
        "the open request is cancelled: the box runs"
    );
    // Past the grace period, the younger one goes; the oldest stays.
    cloud.insert_instance(twin("i-00000000000000old", 3600 * 24));
    cloud.insert_instance(twin("i-0000000000000late", 3600));
    daemon.reconcile().await.expect("pass");
    let now_live = live(&cloud);
    assert!(
        now_live.contains(&InstanceId::new("i-00000000000000old")),
        "{now_live:?}"
    );
    assert!(
        !now_live.contains(&InstanceId::new("i-0000000000000late")),
        "{now_live:?}"
    );
    assert!(
        now_live.contains(&first.id),
        "younger than the grace period: {now_live:?}"
    );
    assert_eq!(first.market, Market::Spot);
    let events = store
        .for_owner("tester")
        .events(Some("dev"), 20)
        .await
        .expect("events");
    assert!(events.iter().any(|e| e.kind == "duplicate"), "{events:?}");
    assert!(
        events.iter().any(|e| e.kind == "stale-request"),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_spot_warning_for_a_pool_instance_is_refilled_by_the_next_pass_elsewhere() {
    use spotkeeper_cloud::model::tags;
    let (cloud, store, locks) = world().await;
    let cfg = config(
        "[pool.workers]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ { type = \"t3.micro\" } ]\n\
         zones = [\"us-east-1a\", \"us-east-1b\"]\nmin_capacity = 2\nmax_capacity = 4\n",
    );
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon.reconcile().await.expect("pass");
    let pool_live = |c: &FakeCloud| {
        c.all_instances()
            .into_iter()
            .filter(|i| i.state.is_live() && i.tag(tags::POOL) == Some("workers"))
            .collect::<Vec<_>>()
    };
    let first = pool_live(&cloud);
    assert_eq!(first.len(), 2);
    let victim = first[0].clone();
    spot_warning(&daemon, &victim.id, "pool-warn-1").await;
    // The warned instance still runs, but no longer counts: a third one now.
    daemon.reconcile().await.expect("pass");
    let now = pool_live(&cloud);
    assert_eq!(now.len(), 3, "{now:?}");
    let fresh = now
        .iter()
        .find(|i| !first.iter().any(|f| f.id == i.id))
        .expect("a replacement");
    assert_ne!(
        fresh.zone, victim.zone,
        "the interrupted offering is avoided"
    );
    // The same warning again acts once; AWS takes the instance; still 2 live.
    assert!(matches!(
        daemon
            .handle(&warning("spot", victim.id.as_str(), "pool-warn-1"))
            .await
            .expect("handled"),
        Handled::Duplicate
    ));
    cloud.set_state(&victim.id, InstanceState::Terminated);
    daemon.reconcile().await.expect("pass");
    assert_eq!(pool_live(&cloud).len(), 2);
    let events = store
        .for_owner("tester")
        .pool_events("workers", 20)
        .await
        .expect("events");
    assert!(
        events.iter().any(|e| e.kind == "spot-interruption"),
        "{events:?}"
    );
}

#[tokio::test]
async fn one_pass_over_many_pools_reads_prices_and_instances_once() {
    let (cloud, store, locks) = world().await;
    let mut extra = String::new();
    for n in 0..5 {
        extra.push_str(&format!(
            "[pool.p{n}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\" }} ]\n\
             zones = [\"us-east-1a\", \"us-east-1b\"]\nmin_capacity = 1\nmax_capacity = 2\n"
        ));
    }
    let cfg = config(&extra);
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon.reconcile().await.expect("pass");
    let before = cloud.calls().len();
    daemon.reconcile().await.expect("pass");
    let calls: Vec<String> = cloud.calls()[before..].to_vec();
    for op in [
        "DescribeInstances",
        "DescribeSpotInstanceRequests",
        "DescribeSpotPriceHistory",
    ] {
        assert_eq!(
            calls.iter().filter(|c| *c == op).count(),
            1,
            "{op} once per pass for five pools: {calls:?}"
        );
    }
    assert!(!calls.iter().any(|c| c == "RunInstances"), "{calls:?}");
}

#[tokio::test]
async fn a_box_registered_through_the_api_keeps_its_rebalance_policy() {
    let (cloud, store, locks) = world().await;
    let cfg = config("");
    let spec = serde_json::json!({
        "image": "ami-0123456789abcdef0", "instance_types": ["t3.micro"], "max_price": 0.02,
        "ready": { "check": "none" }, "on_rebalance": "replace"
    });
    store
        .for_owner("tester")
        .register_box("web", "api", Some(&spec.to_string()))
        .await
        .expect("register");
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon.reconcile().await.expect("pass");
    let web = cloud
        .all_instances()
        .into_iter()
        .find(|i| i.state.is_live())
        .expect("web launched");
    let out = daemon
        .handle(&warning("rebalance", web.id.as_str(), "api-rebalance"))
        .await
        .expect("handled");
    assert!(matches!(out, Handled::Acted(_)), "replace applies: {out:?}");
}

#[tokio::test]
async fn each_pass_records_the_instances_it_saw() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon.reconcile().await.expect("pass");
    let seen = store
        .for_owner("tester")
        .seen_instances(10)
        .await
        .expect("seen");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].instance_id, first.id.as_str());
    assert_eq!(seen[0].box_name.as_deref(), Some("dev"));
    assert_eq!(seen[0].state, "running");
    cloud.set_state(&first.id, InstanceState::Terminated);
    daemon.reconcile().await.expect("pass");
    let seen = store
        .for_owner("tester")
        .seen_instances(10)
        .await
        .expect("seen");
    let old = seen
        .iter()
        .find(|s| s.instance_id == first.id.as_str())
        .expect("still known");
    assert_eq!(old.state, "terminated");
    assert!(old.first_seen <= old.last_seen);
    // The replacement that pass launched is seen by the next one.
    daemon.reconcile().await.expect("pass");
    let seen = store
        .for_owner("tester")
        .seen_instances(10)
        .await
        .expect("seen");
    assert_eq!(seen.len(), 2, "and its replacement: {seen:?}");
}

#[tokio::test]
async fn on_tokios_paused_clock_an_interrupted_offering_comes_back_after_five_minutes() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    daemon
        .handle(&warning("spot", first.id.as_str(), "paused-1"))
        .await
        .expect("handled");
    let marked = spotkeeper_cloud::Offering::new(
        &first.instance_type,
        first.zone.as_deref().expect("zone"),
        spotkeeper_cloud::Market::Spot,
    );
    // Paused only now: the state file's pool has timeouts of its own, which
    // a paused clock would fire while SQLite's thread answers.
    tokio::time::pause();
    assert!(daemon.unavailable().contains(&marked));
    tokio::time::advance(UNAVAILABLE_FOR - Duration::from_secs(1)).await;
    assert!(daemon.unavailable().contains(&marked), "still avoided");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        daemon.unavailable().is_empty(),
        "five minutes on: usable again"
    );
}

#[tokio::test]
async fn a_box_that_cannot_be_replaced_backs_off_and_says_so_once_per_kind_of_failure() {
    let (cloud, store, locks, cfg) = setup("").await;
    let ctx = ctx(&cloud, &store, locks.path());
    let first = up(&ctx, &cfg).await;
    cloud.set_state(&first.id, InstanceState::Terminated);
    for z in ["us-east-1a", "us-east-1b"] {
        for t in ["t3.micro", "t3a.micro"] {
            cloud.refuse(
                t,
                z,
                spotkeeper_cloud::Market::Spot,
                "InsufficientInstanceCapacity",
            );
        }
    }
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    let failed_events = |store: &Store| {
        let store = store.clone();
        async move {
            store
                .for_owner("tester")
                .events(None, 100)
                .await
                .expect("events")
                .into_iter()
                .filter(|e| e.kind == "replace-failed")
                .count()
        }
    };
    // The first pass tries every offering once and fails.
    let _ = daemon.reconcile().await;
    let tried = cloud.count("RunInstances") - 1;
    assert_eq!(tried, 4, "two types in two zones");
    let tried = tried + 1;
    // Passes within the backoff do not try again, and say nothing more.
    for _ in 0..5 {
        let _ = daemon.reconcile().await;
    }
    assert_eq!(cloud.count("RunInstances"), tried, "backing off");
    assert_eq!(failed_events(&store).await, 1, "said once");
    // After the backoff the box is tried again; the same failure is not
    // news. (The daemon's backoff runs on tokio's clock, moved here; paused
    // only while it moves: the state file's pool has timeouts of its own.)
    let later = |by: Duration| async move {
        tokio::time::pause();
        tokio::time::advance(by).await;
        tokio::time::resume();
    };
    later(Duration::from_secs(10)).await;
    let _ = daemon.reconcile().await;
    assert_eq!(cloud.count("RunInstances"), tried + 4, "tried again");
    assert_eq!(
        failed_events(&store).await,
        1,
        "the same failure, not said again"
    );
    // Counted each time by the task runner, said once.
    let metrics = daemon.metrics().render();
    assert!(
        metrics.contains("spotkeeper_task_failures_total{kind=\"replace\"} 2"),
        "{metrics}"
    );
    // Capacity comes back: the next try after the (longer) backoff replaces it.
    cloud.accept();
    later(Duration::from_secs(30)).await;
    let done = daemon.reconcile().await.expect("pass");
    assert!(done.iter().any(|d| d.contains("is up")), "{done:?}");
    // And failing again later is news again.
    let events = store
        .for_owner("tester")
        .events(None, 100)
        .await
        .expect("events");
    assert!(events.iter().any(|e| e.kind == "replaced"), "{events:?}");
}

#[tokio::test]
async fn a_managed_box_gone_from_the_config_is_said_once_not_every_pass() {
    let (cloud, store, locks, cfg) = setup("").await;
    store
        .for_owner("tester")
        .register_box("gone", "up", None)
        .await
        .expect("managed");
    let daemon = daemon(&cloud, &store, &cfg, &locks);
    for _ in 0..4 {
        let _ = daemon.reconcile().await;
    }
    let unknown = store
        .for_owner("tester")
        .events(Some("gone"), 100)
        .await
        .expect("events")
        .into_iter()
        .filter(|e| e.kind == "unknown-box")
        .count();
    assert_eq!(unknown, 1);
}
