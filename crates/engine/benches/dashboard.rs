//! Benchmark: what one dashboard refresh costs the daemon with a year of
//! prices in the state file: `GET /api/boxes` (20 boxes) over 500,000 price
//! samples (500 offerings × 1,000 readings), a box's price chart of a
//! week, and the AWS calls the reads made (the page reads the daemon's last
//! observation; the goal is none). Prints median and p90; asserts nothing.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Instance, InstanceId, InstanceState, Market, SpotPrice};
use spotkeeper_engine::api::{ApiState, router};
use spotkeeper_engine::config::{self, Secret};
use spotkeeper_engine::daemon::Observation;
use spotkeeper_engine::daemon::seen::LastSeen;
use spotkeeper_engine::store::Store;
use tower::ServiceExt;

const BOXES: usize = 20;
const TYPES: usize = 50;
const ZONES: [&str; 10] = [
    "us-east-1a",
    "us-east-1b",
    "us-east-1c",
    "us-east-1d",
    "us-east-1e",
    "us-east-1f",
    "us-east-2a",
    "us-east-2b",
    "us-east-2c",
    "us-west-2a",
];
const READINGS: i64 = 1_000;
const TOKEN: &str = "bench-token-0123456789";

fn instance(n: usize) -> Instance {
    Instance {
        id: InstanceId::new(format!("i-{n:017x}")),
        state: InstanceState::Running,
        instance_type: "t3.type-0".into(),
        zone: Some(ZONES[0].into()),
        market: Market::Spot,
        spot_request_id: None,
        public_ip: Some(format!("198.51.100.{n}")),
        private_ip: None,
        launched_at: Some(SystemTime::now() - Duration::from_secs(3600)),
        image_id: None,
        subnet_id: None,
        vpc_id: None,
        tags: [
            (tags::OWNER.to_owned(), "bench".to_owned()),
            (tags::BOX.to_owned(), format!("box-{n}")),
        ]
        .into_iter()
        .collect(),
    }
}

async fn fill(store: &Store) {
    let now = spotkeeper_engine::store::unix_now();
    let start = now - READINGS * 600;
    for r in 0..READINGS {
        // Every reading a new price: every one is kept as a sample.
        let prices: Vec<SpotPrice> = (0..TYPES)
            .flat_map(|t| {
                ZONES.iter().map(move |z| SpotPrice {
                    instance_type: format!("t3.type-{t}"),
                    zone: (*z).to_owned(),
                    price: 0.01 + (r % 2) as f64 * 0.001 + t as f64 * 0.0001,
                })
            })
            .collect();
        store
            .record_prices(&prices, start + r * 600)
            .await
            .expect("record");
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

async fn timed<F, Fut>(runs: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed());
    }
    times.sort();
    (percentile(&times, 50), percentile(&times, 90))
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&dir.path().join("state.db"))
        .await
        .expect("store");
    let filled = Instant::now();
    fill(&store).await;
    eprintln!(
        "dashboard: {} price samples written in {:.1} s",
        READINGS as usize * TYPES * ZONES.len(),
        filled.elapsed().as_secs_f64()
    );
    let mut text = String::from("owner = \"bench\"\n");
    for b in 0..BOXES {
        text += &format!(
            "[box.box-{b}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.type-0\"]\nmax_price = 0.02\n"
        );
    }
    let config = config::parse(Path::new("bench.toml"), &text).expect("config");
    // Managed, as `up` or the daemon leaves them: the API shows managed boxes.
    for b in 0..BOXES {
        store
            .for_owner("bench")
            .register_box(&format!("box-{b}"), "up", None)
            .await
            .expect("managed");
    }
    let seen = LastSeen::default();
    seen.set(
        SystemTime::now(),
        Arc::new(Observation {
            instances: Arc::new((0..BOXES).map(instance).collect()),
            ..Observation::default()
        }),
    );
    let cloud = Arc::new(FakeCloud::new(&["us-east-1a"]));
    let locks = tempfile::tempdir().expect("locks");
    let state = ApiState {
        cloud: cloud.clone(),
        store: store.clone(),
        config: Arc::new(config),
        token: Secret::new(TOKEN),
        lock_dir: locks.path().to_path_buf(),
        wake: Arc::default(),
        metrics: Arc::default(),
        daemon_id: "bench".into(),
        health: Default::default(),
        dns_cache: Default::default(),
        seen,
        queue: Default::default(),
    };
    let app = router(state);
    let get = |uri: &'static str| {
        let app = app.clone();
        async move {
            let req = Request::builder()
                .uri(uri)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .expect("request");
            let resp = app.oneshot(req).await.expect("response");
            assert_eq!(resp.status(), StatusCode::OK, "{uri}");
            let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
        }
    };
    let (p50, p90) = timed(100, || get("/api/boxes")).await;
    println!(
        "GET /api/boxes, {BOXES} boxes, 500,000 price samples: median {:.2} ms, p90 {:.2} ms (goal < 20 ms)",
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3
    );
    let (p50, p90) = timed(20, || get("/api/charts/prices?box=box-0&days=7")).await;
    println!(
        "GET /api/charts/prices (a box's week: 1 type x 10 zones of 500 offerings): median {:.2} ms, p90 {:.2} ms",
        p50.as_secs_f64() * 1e3,
        p90.as_secs_f64() * 1e3
    );
    println!(
        "AWS calls made by those reads: {} (goal 0: the daemon's last observation)",
        cloud.calls().len()
    );
}
