//! Benchmark (#21): a wave of 64 spot warnings at one daemon whose state is
//! on PostgreSQL (the testkit's throwaway server), on FakeCloud with a round
//! trip of `LATENCY` on every AWS call, each replacement with a 5 s ready
//! check. A replacement holds its box's lock, a connection of the store's
//! lock pool, from before its launch until its ready check passed: with
//! fewer lock connections than tasks, the rest of the wave waits for the
//! first ones' checks.
//!
//! Printed for the lock pool a daemon's store has now
//! ([`Connections::daemon`]: `max_tasks` + 2) and for the 32 it had before:
//! when the 1st, 32nd, 33rd and 64th `RunInstances` were called after the
//! warnings went into the queue. Not a test: nothing is asserted but that
//! the daemon got there. `scripts/bench`, or `cargo bench --profile dev
//! --workspace --bench waves`.

use std::path::Path;
use std::time::{Duration, Instant};

use spotkeeper_cloud::fake::{FakeCloud, FakeQueue};
use spotkeeper_engine::boxes::{self, Silent, Timing};
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::{CancellationToken, Daemon};
use spotkeeper_engine::store::{Connections, DatabaseUrl, Store};

const WAVE: usize = 64;
/// One AWS round trip (the same region, a busy account).
const LATENCY: Duration = Duration::from_millis(25);
const TIMING: Timing = Timing {
    poll: Duration::from_millis(50),
    running_timeout: Duration::from_secs(60),
    stop_timeout: Duration::from_secs(60),
};

fn config(ready: &str) -> Config {
    let mut text = String::from("owner = \"bench\"\n[daemon]\ninterval = \"1h\"\nmax_tasks = 64\n");
    for i in 0..WAVE {
        text.push_str(&format!(
            "[box.b{i:02}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\n\
             max_price = 0.02\nready = {ready}\n"
        ));
    }
    config::parse(Path::new("bench.toml"), &text).expect("valid")
}

fn warning(instance: &str, id: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/events/spot-interruption-warning.json"),
    )
    .expect("fixture")
    .replace("i-1234567890abcdef0", instance)
    .replace("12345678-1234-1234-1234-123456789012", id)
}

/// Seconds after the warnings at which each replacement's RunInstances was
/// called, with a store of `connections`.
async fn wave(connections: Connections) -> Vec<f64> {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let store = Store::connect_with(&url, connections).await.expect("store");
    let cloud = FakeCloud::new(&["us-east-1a", "us-east-1b"]);
    for z in ["us-east-1a", "us-east-1b"] {
        cloud.set_price("t3.micro", z, 0.004);
        cloud.set_price("t3a.micro", z, 0.005);
    }
    let locks = tempfile::tempdir().expect("dir");
    let ctx = boxes::Ctx {
        cloud: &cloud,
        store: &store,
        owner: "bench",
        lock_dir: locks.path(),
        progress: &Silent,
        timing: TIMING,
    };
    let quick = config("{ check = \"none\" }");
    let mut first = Vec::new();
    for spec in quick.boxes.values() {
        first.push(boxes::up(&ctx, spec).await.expect("up").instance);
    }
    cloud.set_latency(LATENCY);
    // From now on every replacement's ready check takes five seconds.
    let cfg = config("{ check = \"command\", command = \"sleep 5\", timeout = \"1m\" }");
    let daemon = Daemon::new(&cloud, &store, &cfg, locks.path()).with_timing(TIMING);
    let queue = FakeQueue::new();
    let stop = CancellationToken::new();
    let rx = stop.clone();
    let mut passes = daemon.passes();
    let watch = async {
        passes.wait_for(|p| *p >= 1).await.expect("a first pass");
        let before = cloud.count("RunInstances");
        let sent = Instant::now();
        for (n, i) in first.iter().enumerate() {
            queue.push(&warning(i.id.as_str(), &format!("wave-{n}")));
        }
        let mut at = Vec::new();
        let deadline = sent + Duration::from_secs(120);
        while at.len() < WAVE {
            let now = cloud.count("RunInstances") - before;
            while at.len() < now.min(WAVE) {
                at.push(sent.elapsed().as_secs_f64());
            }
            assert!(Instant::now() < deadline, "only {} launches", at.len());
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.cancel();
        at
    };
    let ((), at) = tokio::join!(daemon.run(&queue, rx), watch);
    at
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "waves: {WAVE} spot warnings at once, one daemon (max_tasks 64), state on PostgreSQL, FakeCloud with {} ms per AWS call, a 5 s ready check per replacement",
        LATENCY.as_millis()
    );
    let before = Connections {
        locks: 32,
        ..Connections::daemon(WAVE)
    };
    for (what, connections) in [
        (
            "now (max_tasks + 2 lock connections)",
            Connections::daemon(WAVE),
        ),
        ("before (32 lock connections)", before),
    ] {
        let at = rt.block_on(wave(connections));
        println!(
            "  {what}: RunInstances of the 1st {:.2} s, 32nd {:.2} s, 33rd {:.2} s, {WAVE}th {:.2} s after the warnings (target: {WAVE}th < 3 s)",
            at[0],
            at[31],
            at[32],
            at[WAVE - 1]
        );
    }
}
