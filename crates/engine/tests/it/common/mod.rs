//! Fixtures the engine's test files share: a FakeCloud region with prices,
//! an in-memory state store, and the real EC2 event samples.
#![allow(dead_code)]

use std::path::Path;

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_engine::boxes::{Ctx, Silent, Timing};
use spotkeeper_engine::config::DEFAULT_MAX_TASKS;
use spotkeeper_engine::store::{Connections, DatabaseUrl, Store};

/// An empty state store: in memory, or — in `scripts/test`'s PostgreSQL
/// pass — a fresh database on the throwaway server, with a daemon's
/// connections.
pub async fn store() -> Store {
    match spotkeeper_testkit::test_database() {
        Some(url) => Store::connect_with(
            &DatabaseUrl::parse(&url).expect("url"),
            Connections::daemon(DEFAULT_MAX_TASKS),
        )
        .await
        .expect("postgres store"),
        None => Store::memory().await.expect("store"),
    }
}

/// Two zones, t3.micro at 0.004 and t3a.micro at 0.005 in each, an empty
/// state store ([`store`]), and a directory for lock files.
pub async fn world() -> (FakeCloud, Store, tempfile::TempDir) {
    let cloud = FakeCloud::new(&["us-east-1a", "us-east-1b"]);
    for z in ["us-east-1a", "us-east-1b"] {
        cloud.set_price("t3.micro", z, 0.004);
        cloud.set_price("t3a.micro", z, 0.005);
    }
    (cloud, store().await, tempfile::tempdir().expect("dir"))
}

/// The sample event `file` (`fixtures/events/`) about `instance`, with
/// event id `id`.
pub fn event(file: &str, instance: &str, id: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/events")
            .join(file),
    )
    .expect("fixture")
    .replace("i-1234567890abcdef0", instance)
    .replace("12345678-1234-1234-1234-123456789012", id)
    .replace("22345678-1234-1234-1234-123456789012", id)
    .replace("7bf73129-1428-4cd3-a780-95db273d1602", id)
}

/// What `up` and `stop` need, as owner `tester`, silent, with `timing`.
pub fn ctx<'a>(cloud: &'a FakeCloud, store: &'a Store, locks: &'a Path, timing: Timing) -> Ctx<'a> {
    Ctx {
        cloud,
        store,
        owner: "tester",
        lock_dir: locks,
        progress: &Silent,
        timing,
    }
}
