//! What the daemon will not do on a credential's or a state file's word:
//! terminate instances of a pool it cannot read or has no record of
//! deleting, act on an event AWS contradicts, or act on another account's
//! events; and it forgets old rows.

use crate::common;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Instance, InstanceId, InstanceState, Market};
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::{Daemon, Handled};
use spotkeeper_engine::event_kind::EventKind;
use spotkeeper_engine::store::Store;

const POOL: &str = "[pool.workers]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ { type = \"t3.micro\" } ]\nmax_price = 0.02\nzones = [\"us-east-1a\"]\nmin_capacity = 1\nmax_capacity = 1\n";

fn config(extra: &str) -> Config {
    config::parse(Path::new("t.toml"), &format!("owner = \"tester\"\n{extra}")).expect("valid")
}

fn instance(id: &str, tag: (&str, &str), market: Market, state: InstanceState) -> Instance {
    Instance {
        id: InstanceId::new(id),
        state,
        instance_type: "t3.micro".into(),
        zone: Some("us-east-1a".into()),
        market,
        spot_request_id: None,
        public_ip: None,
        private_ip: None,
        // Old enough to be past every grace period.
        launched_at: Some(SystemTime::now() - Duration::from_secs(24 * 3600)),
        image_id: None,
        subnet_id: None,
        vpc_id: None,
        tags: BTreeMap::from([
            (tags::OWNER.to_owned(), "tester".to_owned()),
            (tag.0.to_owned(), tag.1.to_owned()),
        ]),
    }
}

fn live(cloud: &FakeCloud) -> Vec<String> {
    cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.state.is_live())
        .map(|i| i.id.to_string())
        .collect()
}

async fn world() -> (FakeCloud, Store, tempfile::TempDir) {
    let cloud = FakeCloud::new(&["us-east-1a"]);
    cloud.set_price("t3.micro", "us-east-1a", 0.004);
    (
        cloud,
        common::store().await,
        tempfile::tempdir().expect("dir"),
    )
}

#[tokio::test]
async fn instances_of_a_pool_without_a_readable_spec_or_a_deletion_record_are_left_alone() {
    let (cloud, store, locks) = world().await;
    let cfg = config("");
    // An API-registered pool's instances, and a state file that lost it.
    cloud.insert_instance(instance(
        "i-0000000000000a01",
        (tags::POOL, "api-pool"),
        Market::Spot,
        InstanceState::Running,
    ));
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path());
    daemon.reconcile().await.expect("pass");
    daemon.reconcile().await.expect("pass");
    assert_eq!(live(&cloud), ["i-0000000000000a01"], "left alone");
    assert_eq!(cloud.count("TerminateInstances"), 0);
    let events = store
        .for_owner("tester")
        .events(None, 20)
        .await
        .expect("events");
    assert_eq!(
        events.iter().filter(|e| e.kind == "unknown-pool").count(),
        1,
        "said once: {events:?}"
    );
    assert!(
        daemon
            .metrics()
            .render()
            .contains("spotkeeper_left_alone_pools{kind=\"unknown-pool\"} 1")
    );

    // A stored spec that no longer parses: unknown too, not an orphan.
    store
        .for_owner("tester")
        .register_pool("api-pool", "{\"not\": \"a pool\"}")
        .await
        .expect("stored");
    daemon.reconcile().await.expect("pass");
    assert_eq!(live(&cloud), ["i-0000000000000a01"]);

    // Positive evidence: the pool was deleted through this daemon's API.
    store
        .for_owner("tester")
        .deregister_pool("api-pool")
        .await
        .expect("deregistered");
    store
        .for_owner("tester")
        .pool_deleted("api-pool", "api")
        .await
        .expect("recorded");
    daemon.reconcile().await.expect("pass");
    assert!(live(&cloud).is_empty(), "collected once deleted");
}

#[tokio::test]
async fn a_pool_removed_from_the_config_file_is_collected_one_never_seen_there_is_not() {
    let (cloud, store, locks) = world().await;
    let with_pool = config(POOL);
    // The same daemon before and after its config changed (one id: on
    // PostgreSQL a new id would wait for the old one's leases to expire).
    let daemon = Daemon::new(&cloud, &store, &with_pool, locks.path()).with_id("d1");
    daemon
        .reconcile()
        .await
        .expect("pass launches the pool's one instance");
    assert_eq!(live(&cloud).len(), 1);
    cloud.insert_instance(instance(
        "i-00000000000000b2",
        (tags::POOL, "never-here"),
        Market::Spot,
        InstanceState::Running,
    ));
    // Age the pool's instance past the grace period.
    let mine: Vec<Instance> = cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.tag(tags::POOL) == Some("workers"))
        .collect();
    for i in mine {
        cloud.insert_instance(Instance {
            launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
            ..i
        });
    }
    let without = config("");
    let daemon = Daemon::new(&cloud, &store, &without, locks.path()).with_id("d1");
    daemon.reconcile().await.expect("pass");
    assert_eq!(
        live(&cloud),
        ["i-00000000000000b2"],
        "the removed pool's instance is collected, the unknown one is not"
    );
}

#[tokio::test]
async fn events_that_aws_or_the_account_contradict_are_ignored() {
    let (cloud, store, locks) = world().await;
    let cfg = config(
        "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nready = { check = \"none\" }\n",
    );
    store
        .for_owner("tester")
        .ensure_managed("dev", "up")
        .await
        .expect("managed");
    cloud.insert_instance(instance(
        "i-00000000000000dd",
        (tags::BOX, "dev"),
        Market::OnDemand,
        InstanceState::Running,
    ));
    let daemon =
        Daemon::new(&cloud, &store, &cfg, locks.path()).with_account(Some("123456789012".into()));
    let fixture = |name: &str, id: &str| common::event(name, "i-00000000000000dd", id);
    // A spot warning for an on-demand instance.
    let out = daemon
        .handle(&fixture("spot-interruption-warning.json", "e-od"))
        .await
        .expect("handled");
    assert!(
        matches!(&out, Handled::Ignored(w) if w.contains("on-demand")),
        "{out:?}"
    );
    // "Terminated", while AWS shows it running.
    let out = daemon
        .handle(&fixture("state-change-terminated.json", "e-st"))
        .await
        .expect("handled");
    assert!(
        matches!(&out, Handled::Ignored(w) if w.contains("running")),
        "{out:?}"
    );
    // Another account's event.
    let foreign =
        fixture("spot-interruption-warning.json", "e-acct").replace("123456789012", "999999999999");
    let out = daemon.handle(&foreign).await.expect("handled");
    assert!(
        matches!(&out, Handled::Ignored(w) if w.contains("999999999999")),
        "{out:?}"
    );
    assert!(
        store
            .for_owner("tester")
            .doomed()
            .await
            .expect("doomed")
            .is_empty()
    );
    assert!(daemon.unavailable().is_empty());
}

#[tokio::test]
async fn old_rows_are_pruned_after_the_retention() {
    let store = common::store().await;
    store
        .for_owner("tester")
        .first_delivery("old-event", "spot-interruption", Some("i-1"))
        .await
        .expect("recorded");
    store
        .for_owner("tester")
        .doom(
            &spotkeeper_engine::subject::Subject::Box("dev".into()),
            "i-1",
            EventKind::SpotInterruption,
        )
        .await
        .expect("doomed");
    store
        .for_owner("tester")
        .record_event(Some("dev"), EventKind::Launch, "x")
        .await
        .expect("event");
    store
        .for_owner("other")
        .first_delivery("old-event", "spot-interruption", Some("i-9"))
        .await
        .expect("another owner's");
    // A stop done is history; one still open is work.
    store
        .for_owner("tester")
        .request_stop("gone")
        .await
        .expect("asked");
    store
        .for_owner("tester")
        .stop_done("gone")
        .await
        .expect("done");
    store
        .for_owner("tester")
        .request_stop("going")
        .await
        .expect("asked");
    // Nothing is older than a minute ago.
    let now = spotkeeper_engine::store::unix_seconds(SystemTime::now());
    assert_eq!(
        store
            .for_owner("tester")
            .prune(now - 60)
            .await
            .expect("prune"),
        0
    );
    // Everything of this owner is older than a minute from now.
    assert_eq!(
        store
            .for_owner("tester")
            .prune(now + 60)
            .await
            .expect("prune"),
        4
    );
    assert!(
        !store
            .for_owner("tester")
            .seen("old-event")
            .await
            .expect("seen")
    );
    assert_eq!(
        store
            .for_owner("tester")
            .stop_job("gone")
            .await
            .expect("read"),
        None
    );
    assert!(
        store
            .for_owner("tester")
            .stop_job("going")
            .await
            .expect("read")
            .is_some_and(|j| j.open()),
        "an open stop is never pruned"
    );
    assert!(
        store
            .for_owner("other")
            .seen("old-event")
            .await
            .expect("seen"),
        "keyed by owner"
    );
}

#[tokio::test]
async fn a_stop_whose_terminate_failed_is_finished_by_the_next_pass() {
    let (cloud, store, locks) = world().await;
    let cfg = config(
        "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nready = { check = \"none\" }\n",
    );
    let ctx = spotkeeper_engine::boxes::Ctx {
        cloud: &cloud,
        store: &store,
        owner: "tester",
        lock_dir: locks.path(),
        progress: &spotkeeper_engine::boxes::Silent,
        timing: spotkeeper_engine::boxes::Timing {
            poll: Duration::from_millis(1),
            running_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(5),
        },
    };
    let first = spotkeeper_engine::boxes::up(&ctx, &cfg.boxes["dev"])
        .await
        .expect("up")
        .instance;
    cloud.fail_next("TerminateInstances", "RequestLimitExceeded");
    spotkeeper_engine::boxes::stop(&ctx, &cfg.boxes["dev"], false)
        .await
        .expect_err("the terminate call failed");
    assert_eq!(
        live(&cloud),
        [first.id.to_string()],
        "left running, tagged stopped"
    );
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path());
    daemon.reconcile().await.expect("pass");
    assert!(live(&cloud).is_empty(), "the daemon finished the stop");
    assert_eq!(cloud.count("RunInstances"), 1, "and launched nothing");
}
