//! `Daemon::run` itself, in-process on FakeCloud and FakeQueue: messages are
//! deleted once handled and kept when handling fails; a wave of warnings is
//! replaced concurrently; a box whose image takes minutes does not hold
//! another box's replacement; shutdown drops what is in flight at once and
//! the next daemon resumes it; failing passes back off and say so.

use crate::common;
use std::path::Path;
use std::time::Duration;

use crate::common::world;
use spotkeeper_cloud::fake::{FakeCloud, FakeQueue};
use spotkeeper_cloud::{Instance, InstanceState};
use spotkeeper_engine::boxes::{self, Timing};
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::{CancellationToken, Daemon};
use spotkeeper_engine::store::Store;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const TIMING: Timing = Timing {
    poll: Duration::from_millis(5),
    running_timeout: Duration::from_secs(5),
    stop_timeout: Duration::from_secs(5),
};

/// `n` boxes b0 … b(n-1); `extra` lines go into every box.
fn config(n: usize, extra: &str, daemon: &str) -> Config {
    let mut text = format!("owner = \"tester\"\n[daemon]\ninterval = \"1h\"\n{daemon}\n");
    for i in 0..n {
        text.push_str(&format!(
            "[box.b{i}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\nmax_price = 0.02\nready = {{ check = \"none\" }}\n{extra}\n"
        ));
    }
    config::parse(Path::new("t.toml"), &text).expect("valid")
}

fn warning(instance: &str, id: &str) -> String {
    common::event("spot-interruption-warning.json", instance, id)
}

async fn up_all(cloud: &FakeCloud, store: &Store, locks: &Path, cfg: &Config) -> Vec<Instance> {
    let ctx = common::ctx(cloud, store, locks, TIMING);
    let mut out = Vec::new();
    for spec in cfg.boxes.values() {
        out.push(boxes::up(&ctx, spec).await.expect("up").instance);
    }
    out
}

fn live_of(cloud: &FakeCloud, box_name: &str) -> Vec<Instance> {
    cloud
        .all_instances()
        .into_iter()
        .filter(|i| i.state.is_live() && i.tag("spotkeeper:box") == Some(box_name))
        .collect()
}

/// Waits (real time, bounded) until `cond` holds.
async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    spotkeeper_testkit::eventually_async(
        limit,
        Duration::from_millis(5),
        || std::future::ready(cond().then_some(())),
        || format!("timed out waiting for {what}"),
    )
    .await;
}

/// Runs the daemon on `queue` beside `test`, which flips `stop` when done;
/// fails if both have not ended within `limit`.
async fn drive(
    daemon: &Daemon<'_>,
    queue: &FakeQueue,
    rx: CancellationToken,
    test: impl std::future::Future<Output = ()>,
    limit: Duration,
) {
    timeout(limit, async { tokio::join!(daemon.run(queue, rx), test) })
        .await
        .expect("the daemon stopped once the test was done");
}

/// Waits until the daemon has finished `n` more passes.
async fn passes(rx: &mut watch::Receiver<u64>, n: u64) {
    let target = *rx.borrow() + n;
    timeout(Duration::from_secs(10), rx.wait_for(|p| *p >= target))
        .await
        .expect("passes within 10 s")
        .expect("daemon alive");
}

/// A queue to push events into, the stop switch for `drive`, and the
/// daemon's pass counter.
fn harness(
    daemon: &Daemon<'_>,
) -> (
    FakeQueue,
    (CancellationToken, CancellationToken),
    watch::Receiver<u64>,
) {
    let stop = CancellationToken::new();
    (FakeQueue::new(), (stop.clone(), stop), daemon.passes())
}

#[tokio::test]
async fn run_deletes_handled_messages_keeps_failed_ones_and_stops_on_shutdown() {
    let (cloud, store, locks) = world().await;
    let cfg = config(1, "", "");
    let first = up_all(&cloud, &store, locks.path(), &cfg).await;
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    let (queue, (stop, rx), mut passes_rx) = harness(&daemon);
    let test = async {
        passes(&mut passes_rx, 1).await;
        let garbage = queue.push("not json at all");
        // The describe of the instance a state change names fails: the
        // message stays. (A spot warning for an instance the daemon has
        // observed needs no describe: a state change always does.)
        cloud.fail_next("DescribeInstances", "RequestLimitExceeded");
        let kept = queue.push(&common::event(
            "state-change-terminated.json",
            first[0].id.as_str(),
            "w-1",
        ));
        until("the garbage deleted", Duration::from_secs(5), || {
            queue.deleted().contains(&garbage)
        })
        .await;
        until("the failed one received", Duration::from_secs(5), || {
            queue.in_flight().contains(&kept)
        })
        .await;
        assert!(!queue.deleted().contains(&kept), "kept for another try");
        // Redelivered (its visibility timeout passed) once AWS shows the
        // instance going: handled, deleted, replaced.
        cloud.set_state(&first[0].id, InstanceState::ShuttingDown);
        queue.release_in_flight();
        until("the warning deleted", Duration::from_secs(5), || {
            queue.deleted().contains(&kept)
        })
        .await;
        until("the replacement", Duration::from_secs(5), || {
            live_of(&cloud, "b0").iter().any(|i| i.id != first[0].id)
        })
        .await;
        stop.cancel();
    };
    drive(&daemon, &queue, rx, test, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_wave_of_twenty_warnings_is_replaced_concurrently() {
    let (cloud, store, locks) = world().await;
    let cfg = config(20, "", "");
    let first = up_all(&cloud, &store, locks.path(), &cfg).await;
    // Each launch takes a second: one after the other, twenty take twenty.
    cloud.set_delay("RunInstances", Duration::from_secs(1));
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    let (queue, (stop, rx), mut passes_rx) = harness(&daemon);
    let test = async {
        passes(&mut passes_rx, 1).await;
        let launches_before = cloud.count("RunInstances");
        let sent = Instant::now();
        for (n, i) in first.iter().enumerate() {
            queue.push(&warning(i.id.as_str(), &format!("wave-{n}")));
        }
        until("twenty launches", Duration::from_secs(10), || {
            cloud.count("RunInstances") >= launches_before + 20
        })
        .await;
        let took = sent.elapsed();
        assert!(
            took < Duration::from_secs(8),
            "launches overlapped: twenty one-second launches took {took:?}"
        );
        for b in cfg.boxes.keys() {
            until("every box replaced", Duration::from_secs(10), || {
                live_of(&cloud, b).len() == 1
                    && live_of(&cloud, b)[0].state == InstanceState::Running
            })
            .await;
        }
        stop.cancel();
    };
    drive(&daemon, &queue, rx, test, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn an_image_pending_for_minutes_does_not_hold_another_boxs_replacement() {
    let (cloud, store, locks) = world().await;
    let cfg = config(2, "", "");
    let first = up_all(&cloud, &store, locks.path(), &cfg).await;
    // b0 makes an image every day, and the image takes ten minutes.
    let mut cfg = cfg;
    cfg.boxes.get_mut("b0").expect("b0").images.every = Some(Duration::from_secs(86_400));
    cloud.set_delay("CreateImage", Duration::from_secs(600));
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    let queue = FakeQueue::new();
    let stop = CancellationToken::new();
    let rx = stop.clone();
    let b1 = first
        .iter()
        .find(|i| i.tag("spotkeeper:box") == Some("b1"))
        .expect("b1")
        .clone();
    let test = async {
        until("b0's image under way", Duration::from_secs(5), || {
            daemon
                .metrics()
                .render()
                .contains("tasks_in_flight{kind=\"settle\"} 1")
        })
        .await;
        queue.push(&warning(b1.id.as_str(), "img-1"));
        let warned = Instant::now();
        until("b1 replaced", Duration::from_secs(5), || {
            live_of(&cloud, "b1").iter().any(|i| i.id != b1.id)
        })
        .await;
        let took = warned.elapsed();
        assert!(
            daemon
                .metrics()
                .render()
                .contains("tasks_in_flight{kind=\"settle\"} 1"),
            "the image is still being made: {}",
            daemon.metrics().render()
        );
        assert!(took < Duration::from_secs(1), "replaced after {took:?}");
        stop.cancel();
    };
    // Shutdown does not wait for the image.
    drive(&daemon, &queue, rx, test, Duration::from_secs(30)).await;
}

#[tokio::test]
async fn shutdown_drops_a_hung_launch_at_once_and_the_next_daemon_resumes_it_with_the_same_token() {
    let (cloud, store, locks) = world().await;
    let cfg = config(1, "zones = [\"us-east-1a\"]", "");
    let first = up_all(&cloud, &store, locks.path(), &cfg).await;
    cloud.set_delay("RunInstances", Duration::from_secs(3600));
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    let (queue, (stop, rx), mut passes_rx) = harness(&daemon);
    let test = async {
        passes(&mut passes_rx, 1).await;
        queue.push(&warning(first[0].id.as_str(), "hang-1"));
        cloud.set_state(&first[0].id, InstanceState::Terminated);
        until("the launch under way", Duration::from_secs(5), || {
            daemon
                .metrics()
                .render()
                .contains("tasks_in_flight{kind=\"replace\"} 1")
        })
        .await;
        // The launch's intent is written: the call itself hangs.
        spotkeeper_testkit::eventually_async(
            Duration::from_secs(5),
            Duration::from_millis(5),
            || async {
                let intent = store
                    .for_owner("tester")
                    .open_intent("b0")
                    .await
                    .expect("store");
                intent
                    .is_some_and(|i| i.instance_id.is_none())
                    .then_some(())
            },
            || "no new intent".to_owned(),
        )
        .await;
        stop.cancel();
    };
    let stopped = Instant::now();
    // Run returns at once, the hung launch dropped.
    drive(&daemon, &queue, rx, test, Duration::from_secs(5)).await;
    assert!(stopped.elapsed() < Duration::from_secs(5));
    let open = store
        .for_owner("tester")
        .open_intent("b0")
        .await
        .expect("store")
        .expect("the intent of the dropped launch stays open");
    drop(daemon);

    // The next daemon: AWS answers again. It has no memory of the
    // interrupted offering; the price keeps it off that one all the same, so
    // it plans the launch the dropped one planned.
    cloud.set_delay("RunInstances", Duration::ZERO);
    cloud.set_price("t3.micro", "us-east-1a", 0.5);
    let next = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    next.reconcile().await.expect("pass");
    let live = live_of(&cloud, "b0");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        live[0].tag("spotkeeper:intent"),
        Some(open.token.as_str()),
        "launched with the dropped launch's token"
    );
}

#[tokio::test]
async fn failing_passes_back_off_say_so_and_recover() {
    let (cloud, store, locks) = world().await;
    let cfg = config(1, "", "");
    up_all(&cloud, &store, locks.path(), &cfg).await;
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    let (queue, (stop, rx), mut passes_rx) = harness(&daemon);
    for _ in 0..2 {
        cloud.fail_next("DescribeInstances", "RequestLimitExceeded");
    }
    let test = async {
        // The start-up pass and the first retry fail; the second retry works.
        passes(&mut passes_rx, 3).await;
        let m = daemon.metrics().render();
        assert!(
            m.contains("spotkeeper_reconcile_passes_total{kind=\"failed\"} 2"),
            "{m}"
        );
        assert!(
            m.contains("spotkeeper_reconcile_passes_total{kind=\"ok\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("spotkeeper_reconcile_pass_seconds_count 3"),
            "{m}"
        );
        stop.cancel();
    };
    // Recovered after the backoff.
    drive(&daemon, &queue, rx, test, Duration::from_secs(30)).await;
    let events = store
        .for_owner("tester")
        .events(None, 20)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "pass-failed" && e.message.contains("RequestLimitExceeded")),
        "{events:?}"
    );
}
