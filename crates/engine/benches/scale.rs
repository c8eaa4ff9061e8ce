//! Benchmark: the scale of one daemon. 2,000 boxes and 20 pools (1,000 pool
//! instances) on FakeCloud with a round trip of 25 ms on every AWS call,
//! the state in an SQLite file. The fleet is brought up with no latency,
//! then, at 25 ms per call, steady passes (nothing to do) are timed: pass
//! time, AWS calls per steady pass, and the process's memory (RSS now and
//! its peak). Prints the figures with their goals; asserts nothing.
//! `scripts/bench`, or `cargo bench --profile dev --workspace --bench scale`.

use std::path::Path;
use std::time::{Duration, Instant};

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_engine::boxes::Timing;
use spotkeeper_engine::config::{self, Config};
use spotkeeper_engine::daemon::Daemon;
use spotkeeper_engine::store::Store;

const BOXES: usize = 2_000;
const POOLS: usize = 20;
/// Pending jobs per pool: one unit each.
const JOBS: u64 = 50;
/// One AWS round trip (the same region, a busy account).
const LATENCY: Duration = Duration::from_millis(25);
const TIMING: Timing = Timing {
    poll: Duration::from_millis(5),
    running_timeout: Duration::from_secs(60),
    stop_timeout: Duration::from_secs(60),
};

struct Jobs;

#[async_trait::async_trait]
impl spotkeeper_engine::pools::demand::DemandReader for Jobs {
    async fn pending(&self, _d: &spotkeeper_engine::pools::Demand) -> Result<u64, String> {
        Ok(JOBS)
    }
}

fn config() -> Config {
    let mut text =
        String::from("owner = \"bench\"\n[daemon]\ninterval = \"30s\"\nmax_tasks = 32\n");
    for i in 0..BOXES {
        text.push_str(&format!(
            "[box.b{i:04}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\n\
             max_price = 0.02\nready = {{ check = \"none\" }}\n"
        ));
    }
    for p in 0..POOLS {
        text.push_str(&format!(
            "[pool.p{p:02}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\" }}, {{ type = \"t3a.micro\" }} ]\n\
             max_capacity = 100\ndemand = {{ http = \"http://127.0.0.1:9/jobs\" }}\n"
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

/// `VmRSS` and `VmHWM` of this process, in MB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn run() {
    let cloud = FakeCloud::new(&["us-east-1a", "us-east-1b"]);
    for z in ["us-east-1a", "us-east-1b"] {
        cloud.set_price("t3.micro", z, 0.004);
        cloud.set_price("t3a.micro", z, 0.005);
    }
    let cfg = config();
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("store");
    for name in cfg.boxes.keys() {
        store
            .for_owner("bench")
            .register_box(name, "up", None)
            .await
            .expect("register");
    }
    let daemon = Daemon::new(&cloud, &store, &cfg, dir.path())
        .with_timing(TIMING)
        .with_demand(Box::new(Jobs));
    let want = BOXES + POOLS * JOBS as usize;
    let filled = Instant::now();
    let mut passes = 0;
    while live(&cloud) < want {
        daemon.reconcile().await.expect("pass");
        passes += 1;
        assert!(
            passes < 30,
            "the fleet did not come up: {} live",
            live(&cloud)
        );
    }
    eprintln!(
        "scale: {want} instances up in {passes} passes, {:.1} s (no latency)",
        filled.elapsed().as_secs_f64()
    );
    cloud.set_latency(LATENCY);
    // One pass to settle (what the fill left to verify), then steady ones.
    daemon.reconcile().await.expect("pass");
    let mut times = Vec::new();
    let mut calls = Vec::new();
    for _ in 0..5 {
        let before = cloud.calls().len();
        let t = Instant::now();
        daemon.reconcile().await.expect("pass");
        times.push(t.elapsed().as_secs_f64());
        calls.push(cloud.calls().len() - before);
    }
    times.sort_by(f64::total_cmp);
    let (rss, peak) = memory();
    println!(
        "scale: one daemon, {BOXES} boxes and {POOLS} pools ({} pool instances), FakeCloud with {} ms per AWS call, SQLite",
        POOLS * JOBS as usize,
        LATENCY.as_millis()
    );
    println!(
        "  steady pass: median {:.2} s, worst {:.2} s (goal < 1 s)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!("  AWS calls per steady pass: {calls:?}");
    println!("  memory: RSS {rss:.0} MB, peak {peak:.0} MB (goal < 150 MB)");
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
