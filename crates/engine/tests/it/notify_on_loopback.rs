//! `[[notify]]` delivery against webhook receivers on 127.0.0.1: retries
//! until a failing receiver takes every wanted event, in order, signed;
//! delivery resumes after the deliverer is killed; unwanted kinds are skipped.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spotkeeper_engine::event_kind::EventKind;
use spotkeeper_engine::notify::{self, Deliverer, EVENT_HEADER, SIGNATURE_HEADER};
use spotkeeper_engine::store::Store;
use spotkeeper_testkit::{Answer, Receiver};

const SECRET: &str = "0123456789abcdef-hook-secret";

fn deliverer(receiver: &Receiver, events: &str) -> Deliverer {
    let text = format!(
        "owner = \"tester\"\n[[notify]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{events}",
        receiver.url("/hook")
    );
    let config = spotkeeper_engine::config::parse(Path::new("n.toml"), &text).expect("valid");
    let mut d = Deliverer::new(config.notify[0].clone(), "tester").expect("deliverer");
    d.base_backoff = Duration::from_millis(20);
    d.poll = Duration::from_millis(20);
    d
}

/// Runs the deliverer until the returned sender is dropped or sent to.
fn spawn(
    d: Deliverer,
    store: &Store,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let store = store.clone();
    let task = tokio::spawn(async move {
        d.run(store, Arc::default(), async move {
            let _ = stopped.await;
        })
        .await
        .expect("deliverer");
    });
    (stop, task)
}

async fn wait_for(
    r: &Receiver,
    what: &'static str,
    done: impl Fn(&[spotkeeper_testkit::Received]) -> bool + Send + 'static,
) -> Vec<spotkeeper_testkit::Received> {
    let r = r.clone();
    tokio::task::spawn_blocking(move || r.wait_for(Duration::from_secs(20), what, done))
        .await
        .expect("wait")
}

/// Waits until the sinks' cursors in the store satisfy `done`.
async fn wait_for_cursors(
    store: &Store,
    what: &str,
    done: impl Fn(&[(String, spotkeeper_engine::store::NotifyCursor)]) -> bool,
) {
    spotkeeper_testkit::eventually_async(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async {
            let cursors = store
                .for_owner("tester")
                .notify_cursors()
                .await
                .expect("cursors");
            done(&cursors).then_some(())
        },
        || format!("not within 10 s: {what}"),
    )
    .await;
}

fn delivered(got: &[spotkeeper_testkit::Received]) -> Vec<serde_json::Value> {
    got.iter()
        .filter(|g| g.status == 200)
        .map(|g| serde_json::from_str(&g.body).expect("json body"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_failing_three_times_still_gets_every_wanted_event_in_order_signed() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("store");
    let hook = Receiver::start(Answer::Ok, 3);
    let d = deliverer(&hook, "");
    // The sink exists before the events (a new sink is not sent the history).
    store
        .for_owner("tester")
        .notify_cursor("hook")
        .await
        .expect("cursor");
    store
        .for_owner("tester")
        .record_event(Some("dev"), EventKind::Replaced, "i-1 → i-2")
        .await
        .expect("event");
    store
        .for_owner("tester")
        .record_event(Some("dev"), EventKind::Registered, "not wanted")
        .await
        .expect("event");
    store
        .for_owner("tester")
        .record_pool_event("builders", EventKind::LaunchFailed, "no capacity")
        .await
        .expect("event");
    store
        .for_owner("other-owner")
        .record_event(Some("x"), EventKind::Replaced, "not ours")
        .await
        .expect("event");
    let (stop, task) = spawn(d, &store);

    let got = wait_for(&hook, "two deliveries", |g| {
        g.iter().filter(|r| r.status == 200).count() == 2
    })
    .await;
    let _ = stop.send(());
    task.await.expect("stopped");
    assert_eq!(
        got.iter().filter(|r| r.status == 500).count(),
        3,
        "{got:#?}"
    );
    let bodies = delivered(&got);
    assert_eq!(
        bodies
            .iter()
            .map(|b| b["kind"].as_str().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["replaced", "launch-failed"]
    );
    assert_eq!(bodies[0]["box"], "dev");
    assert_eq!(bodies[0]["owner"], "tester");
    assert_eq!(bodies[1]["pool"], "builders");
    assert!(bodies[0]["id"].as_i64() < bodies[1]["id"].as_i64());
    for g in got.iter().filter(|g| g.status == 200) {
        assert_eq!(g.path, "/hook");
        assert_eq!(
            g.headers[SIGNATURE_HEADER],
            notify::signature(SECRET, g.body.as_bytes())
        );
        let body: serde_json::Value = serde_json::from_str(&g.body).expect("json");
        assert_eq!(g.headers[EVENT_HEADER], body["id"].to_string());
    }
    // The same event is retried, not skipped: the three failures were all the first one.
    let first_id = bodies[0]["id"].to_string();
    assert!(
        got.iter()
            .take(4)
            .all(|g| g.headers[EVENT_HEADER] == first_id),
        "{got:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_resumes_after_the_deliverer_is_killed_and_nothing_is_sent_twice_once_taken() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("store");
    let hook = Receiver::start(Answer::Fail, 0);
    store
        .for_owner("tester")
        .notify_cursor("hook")
        .await
        .expect("cursor");
    store
        .for_owner("tester")
        .record_event(Some("dev"), EventKind::Replaced, "i-1 → i-2")
        .await
        .expect("event");
    let (_stop, task) = spawn(deliverer(&hook, ""), &store);
    wait_for(&hook, "a failed attempt", |g| !g.is_empty()).await;
    // The receiver answers before the deliverer records the failure: wait
    // for the record, so the kill lands mid-retry.
    wait_for_cursors(&store, "a failed attempt recorded", |c| c[0].1.attempts > 0).await;
    // Killed mid-retry: nothing is acknowledged, the cursor has not moved.
    task.abort();
    let _ = task.await;
    let cursors = store
        .for_owner("tester")
        .notify_cursors()
        .await
        .expect("cursors");
    assert!(cursors[0].1.attempts >= 1, "{cursors:?}");
    assert!(
        cursors[0]
            .1
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("500")),
        "{cursors:?}"
    );

    hook.set_answer(Answer::Ok);
    let (stop, task) = spawn(deliverer(&hook, ""), &store);
    let got = wait_for(&hook, "the delivery after the restart", |g| {
        g.iter().any(|r| r.status == 200)
    })
    .await;
    let _ = stop.send(());
    task.await.expect("stopped");
    assert_eq!(delivered(&got)[0]["kind"], "replaced");

    // A third deliverer sends the delivered event not again: the cursor
    // moved past it. Events go out in order, so once a new one arrived, a
    // second copy of the old one would have arrived before it.
    let before = hook.got().len();
    let (stop, task) = spawn(deliverer(&hook, ""), &store);
    store
        .for_owner("tester")
        .record_event(Some("web"), EventKind::Replaced, "i-3 → i-4")
        .await
        .expect("event");
    let got = wait_for(&hook, "the event after the third start", move |g| {
        g.len() > before
    })
    .await;
    let _ = stop.send(());
    task.await.expect("stopped");
    let after: Vec<_> = delivered(&got[before..])
        .iter()
        .map(|e| (e["kind"].clone(), e["box"].clone()))
        .collect();
    assert_eq!(after, vec![("replaced".into(), "web".into())], "{got:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filter_sends_only_its_kinds_and_a_new_sink_gets_no_history() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("store");
    store
        .for_owner("tester")
        .record_event(Some("dev"), EventKind::Replaced, "history")
        .await
        .expect("event");
    let hook = Receiver::start(Answer::Ok, 0);
    let d = deliverer(&hook, "events = [\"registered\"]\n");
    // A new sink: starts after the newest event. The events below come
    // after the sink has its cursor (before, they would be history too).
    let (stop, task) = spawn(d, &store);
    wait_for_cursors(&store, "the sink's cursor", |c| !c.is_empty()).await;
    store
        .for_owner("tester")
        .record_event(Some("dev"), EventKind::Replaced, "not wanted")
        .await
        .expect("event");
    store
        .for_owner("tester")
        .record_event(Some("web"), EventKind::Registered, "wanted")
        .await
        .expect("event");
    // In order: the unwanted event, had it been sent, would be first.
    let got = wait_for(&hook, "the registered event", |g| !g.is_empty()).await;
    let _ = stop.send(());
    task.await.expect("stopped");
    assert_eq!(delivered(&got)[0]["box"], "web", "{got:#?}");
    let all = hook.got();
    assert_eq!(all.len(), 1, "{all:#?}");
}
