//! The store's scenarios, on SQLite and (where marked) on a real PostgreSQL.

use super::*;
use crate::event_kind::EventKind;

/// Box `dev`'s first spot t3.micro launch, in `zone`.
fn dev_launch(zone: Option<&str>) -> NewIntent<'_> {
    NewIntent {
        owner: "o",
        box_name: "dev",
        generation: 1,
        token: "tok-1",
        market: Market::Spot,
        instance_type: "t3.micro",
        zone,
    }
}

async fn intents_open_close_and_generations_advance(s: Store) {
    let o = s.for_owner("o");
    assert_eq!(o.next_generation("dev").await.expect("gen"), 1);
    let i = s
        .create_intent(dev_launch(Some("us-east-1a")))
        .await
        .expect("create");
    assert_eq!(
        o.open_intent("dev").await.expect("open").map(|i| i.token),
        Some("tok-1".into())
    );
    s.set_intent_instance(i.id, "i-1").await.expect("set");
    assert_eq!(
        o.open_intent("dev")
            .await
            .expect("open")
            .and_then(|i| i.instance_id),
        Some("i-1".into())
    );
    s.close_intent(i.id, Outcome::Gone).await.expect("close");
    assert_eq!(o.open_intent("dev").await.expect("open"), None);
    assert_eq!(o.next_generation("dev").await.expect("gen"), 2);
    assert_eq!(o.next_generation("other").await.expect("gen"), 1);
}

/// Three closed launches of dev, a closed pool launch, a daemon and its
/// lease long silent, and the cursors of sinks `kept` and `removed`.
async fn history_to_prune(s: &Store) {
    // Three launches of dev, closed: the newest one's generation stays.
    for g in 1..=3 {
        let token = format!("tok-{g}");
        let i = s
            .create_intent(NewIntent {
                generation: g,
                token: &token,
                ..dev_launch(None)
            })
            .await
            .expect("create");
        s.close_intent(i.id, Outcome::Gone).await.expect("close");
    }
    let launch = s
        .for_owner("o")
        .create_pool_launch(&PoolLaunch {
            id: 0,
            pool: "workers".into(),
            token: "pool-tok".into(),
            instance_type: "t3.micro".into(),
            zone: "us-east-1a".into(),
            subnet: None,
            market: Market::Spot,
            count: 1,
            created_at: 0,
        })
        .await
        .expect("pool launch");
    s.close_pool_launch(launch.id, "launched i-1")
        .await
        .expect("close");
    s.for_owner("o")
        .daemon_alive("dead", "host", 1_000, 1, "c")
        .await
        .expect("alive");
    s.for_owner("o")
        .take_lease("box:dev", "dead", 1_000, 2_000)
        .await
        .expect("lease");
    s.for_owner("o")
        .notify_cursor("kept")
        .await
        .expect("cursor");
    s.for_owner("o")
        .notify_cursor("removed")
        .await
        .expect("cursor");
}

async fn pruning_forgets_closed_launches_silent_daemons_and_removed_sinks(s: Store) {
    let o = s.for_owner("o");
    history_to_prune(&s).await;
    let later = unix_now() + 10;
    o.prune(later).await.expect("prune");
    let removed = o
        .prune_cursors(&["kept".to_owned()], later)
        .await
        .expect("cursors");
    assert_eq!(removed, 1);
    let count = |sql: &'static str| {
        let s = s.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&s.pool)
                .await
                .expect("count")
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM intents").await,
        1,
        "the newest stays"
    );
    assert_eq!(
        o.next_generation("dev").await.expect("gen"),
        4,
        "never a token again"
    );
    assert_eq!(count("SELECT COUNT(*) FROM pool_launches").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM leases").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM daemons").await, 0);
    let sinks: Vec<String> = o
        .notify_cursors()
        .await
        .expect("cursors")
        .into_iter()
        .map(|(sink, _)| sink)
        .collect();
    assert_eq!(sinks, ["kept"]);
}

async fn managed_boxes_duplicates_and_doomed_instances_are_recorded(s: Store) {
    let o = s.for_owner("o");
    o.register_box("dev", "up", None).await.expect("register");
    o.register_box("web", "api", Some("{}"))
        .await
        .expect("register");
    o.register_box("dev", "up", None).await.expect("again");
    let names: Vec<String> = o
        .managed_boxes()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["dev", "web"]);
    assert!(o.deregister_box("dev").await.expect("deregister"));
    assert!(!o.deregister_box("dev").await.expect("deregister"));
    // Being stopped, it stays managed until the stop is done.
    o.register_box("dev", "api", None).await.expect("register");
    o.request_stop("dev").await.expect("asked");
    assert!(!o.deregister_box("dev").await.expect("deregister"));
    assert!(
        o.managed_boxes()
            .await
            .expect("read")
            .iter()
            .any(|b| b.name == "dev")
    );
    assert!(
        o.first_delivery("ev-1", "spot-interruption", Some("i-1"))
            .await
            .expect("first")
    );
    assert!(
        !o.first_delivery("ev-1", "spot-interruption", Some("i-1"))
            .await
            .expect("dup")
    );
    let dev = crate::subject::Subject::Box("dev".into());
    o.doom(&dev, "i-1", EventKind::SpotInterruption)
        .await
        .expect("doom");
    o.doom(&dev, "i-1", EventKind::SpotInterruption)
        .await
        .expect("doom twice");
    let workers = crate::subject::Subject::Pool("workers".into());
    o.doom(&workers, "i-2", EventKind::SpotInterruption)
        .await
        .expect("a pool's");
    let mut doomed = o.doomed().await.expect("doomed");
    doomed.sort();
    assert_eq!(doomed, ["i-1", "i-2"]);
    // Stored by subject, as leases name them.
    let subjects: Vec<(String, String)> = sqlx::query_as(
        "SELECT instance_id, subject FROM doomed_instances WHERE owner = 'o' ORDER BY instance_id",
    )
    .fetch_all(&s.pool)
    .await
    .expect("rows");
    assert_eq!(
        subjects,
        [
            ("i-1".to_owned(), "box:dev".to_owned()),
            ("i-2".to_owned(), "pool:workers".to_owned())
        ]
    );
}

#[tokio::test]
async fn state_file_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/state.db");
    {
        let s = Store::open(&path).await.expect("open");
        s.create_intent(dev_launch(None)).await.expect("create");
        s.for_owner("o")
            .record_event(Some("dev"), EventKind::Launch, "launched i-1")
            .await
            .expect("event");
    }
    let s = Store::open(&path).await.expect("reopen");
    assert!(
        s.for_owner("o")
            .open_intent("dev")
            .await
            .expect("open")
            .is_some()
    );
    let ev = s
        .for_owner("o")
        .events(Some("dev"), 10)
        .await
        .expect("events");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].message, "launched i-1");
}

#[tokio::test]
async fn two_processes_creating_the_file_at_once_both_open_it() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        let (a, b) = tokio::join!(Store::open(&path), Store::open(&path));
        a.expect("first open");
        b.expect("second open");
    }
}

async fn price_samples_keep_changes_and_the_price_in_effect_at_the_start(s: Store) {
    let p = |price: f64| spotkeeper_cloud::SpotPrice {
        instance_type: "t3.micro".into(),
        zone: "us-east-1a".into(),
        price,
    };
    for (at, price) in [
        (1000, 0.01),
        (1030, 0.01),
        (1060, 0.02),
        (1700, 0.02),
        (1800, 0.02),
    ] {
        s.record_prices(&[p(price)], at).await.expect("record");
    }
    // Same price within ten minutes: not kept again; after ten minutes: kept.
    let all: Vec<(i64, f64)> = s
        .price_samples_of("t3.micro", 0)
        .await
        .expect("samples")
        .iter()
        .map(|x| (x.at, x.price))
        .collect();
    assert_eq!(all, [(1000, 0.01), (1060, 0.02), (1700, 0.02)]);
    // From 1100: the sample in effect then (1060) and the later ones.
    let from: Vec<i64> = s
        .price_samples_of("t3.micro", 1100)
        .await
        .expect("samples")
        .iter()
        .map(|x| x.at)
        .collect();
    assert_eq!(from, [1060, 1700]);
    // Nothing of a type never sampled.
    assert!(
        s.price_samples_of("m7i.large", 0)
            .await
            .expect("none")
            .is_empty()
    );
    // The price each offering was last read at, one row each; a late
    // writer's older reading does not replace a newer one.
    let other = spotkeeper_cloud::SpotPrice {
        zone: "us-east-1b".into(),
        ..p(0.05)
    };
    s.record_prices(&[other], 1750).await.expect("record");
    s.record_prices(&[p(0.03)], 1200).await.expect("late");
    let latest: Vec<(String, i64, f64)> = s
        .latest_prices()
        .await
        .expect("latest")
        .into_iter()
        .map(|x| (x.zone, x.at, x.price))
        .collect();
    assert_eq!(
        latest,
        [
            ("us-east-1a".to_owned(), 1800, 0.02),
            ("us-east-1b".to_owned(), 1750, 0.05)
        ]
    );
}

async fn leases_go_to_one_holder_and_expired_ones_may_be_taken(s: Store) {
    let o = s.for_owner("o");
    let first = o
        .take_lease("box:dev", "a", 1000, 2000)
        .await
        .expect("take")
        .expect("free: taken");
    assert_eq!(
        o.take_lease("box:dev", "b", 1500, 2500)
            .await
            .expect("held"),
        None
    );
    // Renewing through take keeps when it was first taken, and its
    // generation (no one else held it in between).
    assert_eq!(
        o.take_lease("box:dev", "a", 1600, 2600)
            .await
            .expect("again"),
        Some(first)
    );
    assert_eq!(o.leases().await.expect("leases")[0].since, 1000);
    // Expired: another daemon takes it, at a new generation, and the
    // old holder cannot renew it.
    let second = o
        .take_lease("box:dev", "b", 2700, 3700)
        .await
        .expect("expired")
        .expect("taken over");
    assert!(second > first, "{second} > {first}");
    assert_eq!(o.renew_leases("a", 9999).await.expect("renew"), 0);
    o.release_lease("box:dev", "a").await.expect("not a's");
    let l = o.leases().await.expect("leases");
    assert_eq!(
        (
            l[0].holder.as_str(),
            l[0].expires_at,
            l[0].since,
            l[0].generation
        ),
        ("b", 3700, 2700, second)
    );
    assert_eq!(o.renew_leases("b", 4000).await.expect("renew"), 1);
    // Released and taken again, even by its last holder: a new
    // generation (the counter never goes back).
    o.release_lease("box:dev", "b").await.expect("release");
    let third = o
        .take_lease("box:dev", "b", 4100, 5100)
        .await
        .expect("take")
        .expect("free");
    assert!(third > second, "{third} > {second}");
    // Another owner's subject of the same name is another lease.
    assert!(
        s.for_owner("p")
            .take_lease("box:dev", "a", 2800, 3800)
            .await
            .expect("other owner")
            .is_some()
    );
    o.daemon_alive("a", "host-a", 100, 0, "c")
        .await
        .expect("alive");
    o.daemon_alive("b", "host-b", 200, 1, "c")
        .await
        .expect("alive");
    o.daemon_alive("b", "host-b", 300, 1, "c")
        .await
        .expect("alive again");
    let d = o.daemons(150).await.expect("daemons");
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].id.as_str(), d[0].started_at, d[0].seen_at),
        ("b", 200, 300)
    );
    // A daemon stopping frees its leases at once and forgets the stale.
    o.daemon_gone("b", 150).await.expect("gone");
    assert!(o.leases().await.expect("leases").is_empty());
    assert!(o.daemons(0).await.expect("daemons").is_empty());
}

async fn a_fence_holds_only_for_its_holder_and_generation_until_the_database_clock_says(s: Store) {
    let o = s.for_owner("o");
    let now = s.clock_ms().await.expect("clock");
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("epoch")
        .as_millis() as i64;
    assert!(
        (now - host).abs() < 60_000,
        "the database's clock: {now} vs {host}"
    );
    let generation = o
        .take_lease("box:dev", "a", now, now + 60_000)
        .await
        .expect("take")
        .expect("free");
    let fence = crate::fence::Fence {
        owner: "o".into(),
        subject: "box:dev".into(),
        holder: "a".into(),
        generation,
        offset_ms: 0,
    };
    assert!(s.holds_lease(&fence).await.expect("check"));
    let other = |f: &dyn Fn(&mut crate::fence::Fence)| {
        let mut g = fence.clone();
        f(&mut g);
        g
    };
    for wrong in [
        other(&|f| f.generation += 1),
        other(&|f| f.holder = "b".into()),
        other(&|f| f.subject = "box:other".into()),
        other(&|f| f.owner = "p".into()),
        // The daemon's clock moved past the expiry (tokio's, in tests).
        other(&|f| f.offset_ms = 61_000),
    ] {
        assert!(!s.holds_lease(&wrong).await.expect("check"), "{wrong:?}");
    }
    // An intent is recorded only while the fence in scope holds.
    let new = NewIntent {
        owner: "o",
        box_name: "dev",
        generation: 1,
        token: "tok-1",
        market: spotkeeper_cloud::Market::Spot,
        instance_type: "t3.micro",
        zone: None,
    };
    crate::fence::scope(Some(fence.clone()), s.create_intent(new))
        .await
        .expect("held: recorded");
    let stale = other(&|f| f.generation -= 1);
    let refused = crate::fence::scope(
        Some(stale),
        s.create_intent(NewIntent {
            token: "tok-2",
            generation: 2,
            ..new
        }),
    )
    .await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    assert_eq!(
        o.open_intent("dev")
            .await
            .expect("intent")
            .expect("one")
            .token,
        "tok-1",
        "the fenced-off intent was not recorded"
    );
}

async fn configs_get_generations_by_first_sight_and_a_rewritten_file_is_newest(s: Store) {
    let o = s.for_owner("o");
    let subjects = ["pool:w".to_owned()];
    let record = |fp: &'static str, written: i64| {
        let subjects = &subjects;
        async move {
            o.record_config(fp, subjects, written, 1)
                .await
                .expect("record")
        }
    };
    assert_eq!(record("v1", 100).await, 1);
    assert_eq!(record("v1", 100).await, 1, "seen before: the same");
    assert_eq!(record("v2", 200).await, 2, "new: the next");
    // A stale copy of v1 (its file older than v2's) stays older.
    assert_eq!(record("v1", 150).await, 1);
    assert_eq!(
        o.newest_config().await.expect("newest"),
        Some(("v2".into(), 2))
    );
    // v1 written again after v2 (reverted on purpose): the newest.
    assert_eq!(record("v1", 300).await, 3);
    assert_eq!(
        o.newest_config().await.expect("newest"),
        Some(("v1".into(), 3))
    );
    // Another owner counts on its own.
    assert_eq!(
        s.for_owner("p")
            .record_config("v9", &subjects, 0, 1)
            .await
            .expect("record"),
        1
    );
    // What live daemons run, by their config.
    o.daemon_alive("d1", "h", 1_000, 0, "v1")
        .await
        .expect("alive");
    o.daemon_alive("d2", "h", 10, 0, "v2").await.expect("alive");
    let live = o.live_configs(500).await.expect("live");
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        (
            live[0].daemon.as_str(),
            live[0].generation,
            live[0].subjects.clone()
        ),
        ("d1", 3, vec!["pool:w".to_owned()])
    );
}

/// Runs each scenario on a SQLite store and on a real PostgreSQL server.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Store::memory().await.expect("store")).await;
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                let server = spotkeeper_testkit::Postgres::start();
                let url = super::DatabaseUrl::parse(&server.url()).expect("url");
                super::$name(super::Store::connect(&url).await.expect("store")).await;
            })*
        }
    };
}

on_both!(
    leases_go_to_one_holder_and_expired_ones_may_be_taken,
    a_fence_holds_only_for_its_holder_and_generation_until_the_database_clock_says,
    configs_get_generations_by_first_sight_and_a_rewritten_file_is_newest,
    intents_open_close_and_generations_advance,
    pruning_forgets_closed_launches_silent_daemons_and_removed_sinks,
    managed_boxes_duplicates_and_doomed_instances_are_recorded,
    price_samples_keep_changes_and_the_price_in_effect_at_the_start
);

#[tokio::test]
async fn a_box_lock_in_postgres_holds_off_another_connection_until_dropped() {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let (a, b) = (
        Store::connect(&url).await.expect("a"),
        Store::connect(&url).await.expect("b"),
    );
    let first = a
        .for_owner("o")
        .lock_box("dev", &|| panic!("free"))
        .await
        .expect("lock");
    let waited = std::sync::atomic::AtomicBool::new(false);
    let on_wait = || waited.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = b.for_owner("o").lock_box("dev", &on_wait);
    let second = tokio::time::timeout(Duration::from_millis(500), second).await;
    assert!(second.is_err(), "the second lock must wait");
    assert!(waited.load(std::sync::atomic::Ordering::SeqCst));
    // Another box is not held off.
    let _other = b
        .for_owner("o")
        .lock_box("web", &|| panic!("free"))
        .await
        .expect("web");
    drop(first);
    tokio::time::timeout(
        Duration::from_secs(10),
        b.for_owner("o").lock_box("dev", &|| {}),
    )
    .await
    .expect("taken once the first is dropped")
    .expect("lock");
}

#[tokio::test]
async fn a_daemons_store_holds_a_box_lock_for_every_task_beside_its_id() {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    // 40 tasks (more than the 32 lock connections there used to be).
    let store = Store::connect_with(&url, Connections::daemon(40))
        .await
        .expect("store");
    let _id = store
        .try_lock("spotkeeper daemon o/d1")
        .await
        .expect("try")
        .expect("the daemon's id");
    let names: Vec<String> = (0..40).map(|i| format!("b{i:02}")).collect();
    fn free() {
        panic!("every box is free")
    }
    let all = futures_util::future::join_all(
        names
            .iter()
            .map(|n| store.for_owner("o").lock_box(n, &free)),
    );
    let held = tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("no box waits for another's lock connection");
    assert_eq!(held.into_iter().filter(Result::is_ok).count(), 40);
    // Still a connection for a lock being tried.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), store.try_lock("spare"))
            .await
            .expect("a spare connection")
            .expect("try")
            .is_some()
    );
    assert_eq!(Connections::daemon(40).total(), 40 + 19);
}

#[tokio::test]
async fn the_connection_budget_counts_live_daemons_and_the_servers_reserve() {
    let server = spotkeeper_testkit::Postgres::start_with(&["max_connections=100"]);
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let store = Store::connect_with(&url, Connections::daemon(64))
        .await
        .expect("store");
    let other = Store::connect_with(&url, Connections::daemon(10))
        .await
        .expect("store");
    let now = store.clock_ms().await.expect("clock");
    other
        .for_owner("o")
        .daemon_alive("d2", "h", now, 0, "c")
        .await
        .expect("alive");
    // Silent for long: not counted. This daemon's own row: not twice.
    other
        .for_owner("o")
        .daemon_alive("d3", "h", now - 600_000, 0, "c")
        .await
        .expect("alive");
    store
        .for_owner("o")
        .daemon_alive("d1", "h", now, 0, "c")
        .await
        .expect("alive");
    let budget = store
        .check_connections(("o", "d1"), now - 60_000)
        .await
        .expect("read")
        .expect("PostgreSQL");
    assert_eq!(
        budget,
        ConnectionBudget {
            max_connections: 100,
            reserved: 3,
            mine: 83,
            others: 29,
            other_daemons: 1,
        }
    );
    assert!(!budget.fits(), "83 + 29 > 97");
    let alone = store
        .check_connections(("o", "d1"), now + 1)
        .await
        .expect("read")
        .expect("PostgreSQL");
    assert!(alone.fits(), "83 <= 97");
    assert_eq!(
        Store::memory()
            .await
            .expect("store")
            .check_connections(("o", "d1"), 0)
            .await
            .expect("read"),
        None,
        "SQLite has no connection limit to share"
    );
}

/// Events after `after`: (place, message).
async fn after(store: &Store, after: i64) -> Vec<(i64, String)> {
    store
        .for_owner("o")
        .events_after(after, 100)
        .await
        .expect("events")
        .into_iter()
        .map(|(place, e)| (place, e.message))
        .collect()
}

#[tokio::test]
async fn an_event_committed_late_or_stamped_ahead_is_never_stepped_over() {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let (reader, writer) = (
        Store::connect(&url).await.expect("reader"),
        Store::connect(&url).await.expect("writer"),
    );
    // A transaction takes an id first and commits last.
    let mut slow = writer.pool.begin().await.expect("begin");
    sqlx::query("INSERT INTO events (at, owner, kind, message) VALUES ($1, 'o', 'k', 'late')")
        .bind(unix_now())
        .execute(&mut *slow)
        .await
        .expect("insert");
    writer
        .for_owner("o")
        .record_event(None, EventKind::Launch, "early")
        .await
        .expect("early");
    let seen = after(&reader, 0).await;
    assert_eq!(
        seen.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
        ["early"]
    );
    let cursor = seen[0].0;
    slow.commit().await.expect("commit");
    // A writer whose clock runs 10 s ahead.
    sqlx::query("INSERT INTO events (at, owner, kind, message) VALUES ($1, 'o', 'k', 'ahead')")
        .bind(unix_now() + 10)
        .execute(&writer.pool)
        .await
        .expect("insert");
    let next = after(&reader, cursor).await;
    assert_eq!(
        next.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
        ["late", "ahead"],
        "the late commit and the stamp ahead are both delivered, after the cursor"
    );
    assert!(next.iter().all(|(place, _)| *place > cursor));
    // SQLite: ids are commit order; places follow them.
    let sqlite = Store::memory().await.expect("sqlite");
    for m in ["a", "b"] {
        sqlite
            .for_owner("o")
            .record_event(None, EventKind::Launch, m)
            .await
            .expect("record");
    }
    assert_eq!(
        after(&sqlite, 0).await,
        [(1, "a".to_owned()), (2, "b".to_owned())]
    );
}

#[tokio::test]
async fn a_wrong_password_error_does_not_show_the_password() {
    let server = spotkeeper_testkit::Postgres::start();
    // Trust authentication accepts any password; a missing database fails.
    let url = server
        .url_of("no_such_db")
        .replace("spotkeeper@", "spotkeeper:pw-s3cr3t@");
    let e = Store::connect(&DatabaseUrl::parse(&url).expect("url"))
        .await
        .expect_err("no such database");
    assert!(e.to_string().contains("no_such_db"), "{e}");
    assert!(!e.to_string().contains("pw-s3cr3t"), "{e}");
    assert!(!format!("{e:?}").contains("pw-s3cr3t"), "{e:?}");
}

#[tokio::test]
async fn a_wake_up_reaches_every_listening_daemon_and_sqlite_has_none() {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let (a, b) = (
        Store::connect(&url).await.expect("a"),
        Store::connect(&url).await.expect("b"),
    );
    let mut la = a.wake_listener().await.expect("listen").expect("postgres");
    let mut lb = b.wake_listener().await.expect("listen").expect("postgres");
    b.for_owner("o").wake_daemons("dev").await.expect("wake");
    for l in [&mut la, &mut lb] {
        let got = tokio::time::timeout(Duration::from_secs(10), l.next())
            .await
            .expect("woken")
            .expect("payload");
        assert_eq!(got, ("o".to_owned(), "dev".to_owned()));
    }
    let memory = Store::memory().await.expect("sqlite");
    assert!(memory.wake_listener().await.expect("none").is_none());
    memory
        .for_owner("o")
        .wake_daemons("dev")
        .await
        .expect("a no-op");
}
