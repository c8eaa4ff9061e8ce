//! Benchmark (#14): one daemon against three sharing 300 boxes by leases on
//! one real PostgreSQL server (the testkit's throwaway one), on FakeCloud
//! with a round trip of `LATENCY` on every AWS call. Each daemon has a
//! store (connection pool) of its own, as on separate machines.
//!
//! For 1 and for 3 daemons: the 300 boxes are registered with no instance;
//! every daemon runs passes (each with its tasks) until every box runs —
//! launches per second; then, with all 300 running, one more pass on every
//! daemon at once (the slowest one's time) and the pass of one daemon
//! alone (best of three) — pass time. Printed side by side. Not a test: nothing is asserted. `scripts/bench`, or `cargo bench
//! --profile dev --workspace --bench daemons` (no network needed: PostgreSQL
//! listens on a socket).

use std::path::Path;
use std::time::{Duration, Instant};

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_engine::boxes::Timing;
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::Daemon;
use spotkeeper_engine::store::{DatabaseUrl, Store};

const BOXES: usize = 300;
/// One AWS round trip (the same region, a busy account).
const LATENCY: Duration = Duration::from_millis(25);
const TIMING: Timing = Timing {
    poll: Duration::from_millis(50),
    running_timeout: Duration::from_secs(60),
    stop_timeout: Duration::from_secs(60),
};

fn config() -> Config {
    let mut text = String::from(
        "owner = \"bench\"\n[daemon]\ninterval = \"10s\"\nlease = \"60s\"\nmax_tasks = 32\n",
    );
    for i in 0..BOXES {
        text.push_str(&format!(
            "[box.b{i:03}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\n\
             max_price = 0.02\nready = {{ check = \"none\" }}\n"
        ));
    }
    config::parse(Path::new("bench.toml"), &text).expect("valid")
}

fn live(cloud: &FakeCloud) -> usize {
    cloud
        .all_instances()
        .iter()
        .filter(|i| i.state.is_live())
        .count()
}

struct Figures {
    launch_seconds: f64,
    passes: usize,
    /// The slowest of every daemon's pass, all at once.
    pass_seconds: f64,
    /// One daemon's pass while the others are idle.
    pass_alone_seconds: f64,
}

async fn run(daemons: usize) -> Figures {
    let server = spotkeeper_testkit::Postgres::start();
    let url = DatabaseUrl::parse(&server.url()).expect("url");
    let cloud = FakeCloud::new(&["us-east-1a", "us-east-1b"]);
    for z in ["us-east-1a", "us-east-1b"] {
        cloud.set_price("t3.micro", z, 0.004);
        cloud.set_price("t3a.micro", z, 0.005);
    }
    cloud.set_latency(LATENCY);
    let cfg = config();
    let locks = tempfile::tempdir().expect("dir");
    let mut stores = Vec::new();
    for _ in 0..daemons {
        stores.push(Store::connect(&url).await.expect("store"));
    }
    let crew: Vec<Daemon<'_>> = stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Daemon::new(&cloud, s, &cfg, locks.path())
                .with_id(format!("d{i}"))
                .with_timing(TIMING)
        })
        .collect();
    // Every daemon says it is alive before there is work: the shares are
    // a third each from the first pass.
    for d in &crew {
        d.reconcile().await.expect("empty pass");
    }
    for name in cfg.boxes.keys() {
        stores[0]
            .for_owner("bench")
            .register_box(name, "up", None)
            .await
            .expect("register");
    }
    let started = Instant::now();
    let mut passes = 0;
    while live(&cloud) < BOXES {
        let rounds = futures_util::future::join_all(crew.iter().map(|d| d.reconcile())).await;
        for r in rounds {
            r.expect("pass");
        }
        passes += 1;
        assert!(
            passes < 20,
            "the boxes were not launched: {} live",
            live(&cloud)
        );
    }
    let launch_seconds = started.elapsed().as_secs_f64();
    let passes_now = futures_util::future::join_all(crew.iter().map(|d| async {
        let t = Instant::now();
        d.pass().await.expect("pass");
        t.elapsed().as_secs_f64()
    }))
    .await;
    let mut alone = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        crew[0].pass().await.expect("pass");
        alone = alone.min(t.elapsed().as_secs_f64());
    }
    Figures {
        launch_seconds,
        passes,
        pass_seconds: passes_now.into_iter().fold(0.0, f64::max),
        pass_alone_seconds: alone,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let one = rt.block_on(run(1));
    let three = rt.block_on(run(3));
    println!(
        "daemons: {BOXES} boxes, FakeCloud with {} ms per AWS call, max_tasks 32 per daemon, one PostgreSQL",
        LATENCY.as_millis()
    );
    println!("{:<34} {:>12} {:>12}", "", "1 daemon", "3 daemons");
    println!(
        "{:<34} {:>12.1} {:>12.1}",
        "launch all (s)", one.launch_seconds, three.launch_seconds
    );
    println!(
        "{:<34} {:>12.1} {:>12.1}",
        "launches per second",
        BOXES as f64 / one.launch_seconds,
        BOXES as f64 / three.launch_seconds
    );
    println!(
        "{:<34} {:>12} {:>12}",
        "passes (each with its tasks)", one.passes, three.passes
    );
    println!(
        "{:<34} {:>12.0} {:>12.0}",
        "pass time, all at once (ms)",
        one.pass_seconds * 1000.0,
        three.pass_seconds * 1000.0
    );
    println!(
        "{:<34} {:>12.0} {:>12.0}",
        "pass time, one daemon alone (ms)",
        one.pass_alone_seconds * 1000.0,
        three.pass_alone_seconds * 1000.0
    );
}
