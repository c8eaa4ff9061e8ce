//! The daemon's HTTP API (axum), bound to loopback by default. `/healthz`
//! is open; every `/api` route needs `Authorization: Bearer <token>`.
//! Bad requests get a JSON error (`{"error": "..."}`) and a 4xx status;
//! nothing a client sends can panic the daemon.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use spotkeeper_cloud::Cloud;
use spotkeeper_cloud::model::tags;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

use crate::boxes;
use crate::config::{Config, Secret, parse_box_json, refuse_code};
use crate::event_kind::EventKind;
use crate::store::{StopJob, Store};

/// Requests larger than this are refused (413): a box is a few hundred bytes,
/// user data at most 16 KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The cloud.
    pub cloud: Arc<dyn Cloud>,
    /// The state file.
    pub store: Store,
    /// The config.
    pub config: Arc<Config>,
    /// The bearer token.
    pub token: Secret,
    /// Per-box lock files.
    pub lock_dir: PathBuf,
    /// Wakes the reconciler (a box was registered).
    pub wake: Arc<Notify>,
    /// The daemon's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The daemon's id (in `/healthz` and the daemons list).
    pub daemon_id: String,
    /// Whether the daemon reaches AWS (`/healthz`).
    pub health: crate::daemon::health::HealthState,
    /// What each box's DNS record said lately: the dashboard refreshes every
    /// few seconds, and Route53 allows five requests a second per account.
    pub dns_cache: DnsCache,
}

/// Box name → (when read, for which instance, the status as JSON).
pub type DnsCache =
    Arc<std::sync::Mutex<HashMap<String, (std::time::Instant, Option<String>, Value)>>>;

/// How long a box's DNS status is served from [`ApiState::dns_cache`].
const DNS_STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("owner", &self.config.owner)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/boxes", get(list_boxes).post(register_box))
        .route("/boxes/{name}", get(get_box).delete(delete_box))
        .route("/pools", get(list_pools).post(register_pool))
        .route("/pools/{name}", get(get_pool).delete(delete_pool))
        .route("/events", get(events))
        .route("/notify", get(notify_sinks))
        .route("/daemons", get(daemons))
        .route("/cost", get(cost))
        .route("/charts/prices", get(price_chart))
        .route("/charts/pool", get(pool_chart))
        .route("/instances", get(instances))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(
            "/healthz",
            get(|State(state): State<ApiState>| async move {
                use crate::daemon::health::Health;
                let health = state.health.get();
                let mut body = json!({
                    "status": health.status(),
                    "daemon": state.daemon_id,
                    "leases": state.metrics.leases_held.get(),
                });
                let code = match &health {
                    Health::Ok => StatusCode::OK,
                    Health::Starting => StatusCode::SERVICE_UNAVAILABLE,
                    Health::Degraded(why) => {
                        body["reason"] = json!(why);
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                };
                (code, Json(body))
            }),
        )
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .nest("/api", api)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The web page: static, it asks for the token and reads the API itself,
/// so it shows nothing to someone without the token.
pub const PAGE: &str = include_str!("../web/index.html");

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => error(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>",
        ),
        Some(t) if bool::from(t.as_bytes().ct_eq(state.token.expose().as_bytes())) => {
            next.run(request).await
        }
        Some(_) => error(StatusCode::FORBIDDEN, "wrong token"),
    }
}

/// A managed box's spec: the config's, else the stored one (checked again);
/// `None` when the stored one does not parse.
fn spec_of(state: &ApiState, name: &str, stored: Option<&str>) -> Option<crate::config::BoxSpec> {
    crate::desired::box_spec(&state.config, name, stored)
        .ok()
        .flatten()
}

/// The latest recorded spot price of each offering.
async fn latest_prices(state: &ApiState) -> std::collections::BTreeMap<(String, String), f64> {
    // The samples "since now" are each offering's one in effect now: one row
    // per offering, not every sample of the week, on each 5 s refresh.
    state
        .store
        .price_samples(crate::store::unix_now())
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| ((p.instance_type, p.zone), p.price))
        .collect()
}

/// A box's DNS status for the API, from the cache while it is fresh and
/// about the same instance.
async fn dns_json(
    state: &ApiState,
    spec: &crate::config::BoxSpec,
    instance: Option<&spotkeeper_cloud::Instance>,
) -> Value {
    let id = instance.map(|i| i.id.to_string());
    if let Ok(cache) = state.dns_cache.lock()
        && let Some((at, for_id, v)) = cache.get(&spec.name)
        && at.elapsed() < DNS_STATUS_TTL
        && *for_id == id
    {
        return v.clone();
    }
    let v =
        match crate::dns::status(state.cloud.as_ref(), &state.config.owner, spec, instance).await {
            Ok(Some(d)) => json!({ "name": d.name, "matches": d.matches, "owned": d.owned }),
            Ok(None) => Value::Null,
            Err(e) => {
                json!({ "name": spec.dns.as_ref().map(|d| d.name.clone()), "error": e.to_string() })
            }
        };
    if let Ok(mut cache) = state.dns_cache.lock() {
        cache.insert(
            spec.name.clone(),
            (std::time::Instant::now(), id, v.clone()),
        );
    }
    v
}

async fn box_json(
    state: &ApiState,
    name: &str,
    source: &str,
    stored: Option<&str>,
    live: &[spotkeeper_cloud::Instance],
    prices: &std::collections::BTreeMap<(String, String), f64>,
) -> Value {
    let instance = live.iter().find(|i| i.tag(tags::BOX) == Some(name));
    let spec = spec_of(state, name, stored);
    let price = instance.and_then(|i| {
        prices
            .get(&(i.instance_type.clone(), i.zone.clone()?))
            .copied()
    });
    let dns = match &spec {
        Some(spec) if spec.dns.is_some() => dns_json(state, spec, instance).await,
        _ => Value::Null,
    };
    json!({
        "launched_at": instance.and_then(|i| i.launched_at).map(crate::store::unix_seconds),
        "price": price,
        "max_price": spec.as_ref().map(|s| s.max_price),
        "dns": dns,
        "name": name,
        "source": source,
        "instance_id": instance.map(|i| i.id.to_string()),
        "state": instance.map(|i| i.state.as_str()),
        "instance_type": instance.map(|i| i.instance_type.clone()),
        "zone": instance.and_then(|i| i.zone.clone()),
        "market": instance.map(|i| i.market.as_str()),
        "public_ip": instance.and_then(|i| i.public_ip.clone()),
        "private_ip": instance.and_then(|i| i.private_ip.clone()),
        "in_config": state.config.boxes.contains_key(name),
    })
}

async fn live(state: &ApiState) -> Result<Vec<spotkeeper_cloud::Instance>, Response> {
    boxes::list(state.cloud.as_ref(), &state.config.owner)
        .await
        .map_err(|e| error(StatusCode::BAD_GATEWAY, e.to_string()))
}

async fn list_boxes(State(state): State<ApiState>) -> Response {
    let managed = match state.store.managed_boxes(&state.config.owner).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let live = match live(&state).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let prices = latest_prices(&state).await;
    let mut out = Vec::new();
    for b in &managed {
        out.push(
            box_json(
                &state,
                &b.name,
                &b.source,
                b.spec.as_deref(),
                &live,
                &prices,
            )
            .await,
        );
    }
    Json(Value::Array(out)).into_response()
}

async fn get_box(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let managed = match state.store.managed_boxes(&state.config.owner).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let stop = match state.store.stop_job(&state.config.owner, &name).await {
        Ok(j) => j,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(b) = managed.iter().find(|b| b.name == name) else {
        // A box whose stop is done: what the stop did.
        return match stop {
            Some(job) => {
                Json(json!({ "name": name, "managed": false, "stop": job })).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!("no managed box named {name:?}"),
            ),
        };
    };
    let live = match live(&state).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let prices = latest_prices(&state).await;
    let mut body = box_json(
        &state,
        &b.name,
        &b.source,
        b.spec.as_deref(),
        &live,
        &prices,
    )
    .await;
    if let Some(job) = stop.filter(StopJob::open) {
        body["stop"] = json!(job);
    }
    Json(body).into_response()
}

/// A registration body: a JSON object with a string `name`, returned apart
/// from the other fields.
fn named_body(
    body: Result<Json<Value>, JsonRejection>,
    kind: &str,
) -> Result<(String, Value), (StatusCode, String)> {
    let Json(mut body) = body.map_err(|e| {
        (
            e.status(),
            format!("the body is not a JSON {kind}: {}", e.body_text()),
        )
    })?;
    let Some(object) = body.as_object_mut() else {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object".into(),
        ));
    };
    match object.remove("name") {
        Some(Value::String(name)) => Ok((name, body)),
        _ => Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "name: required, a string".into(),
        )),
    }
}

async fn register_box(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let (name, body) = match named_body(body, "box") {
        Ok(nb) => nb,
        Err((status, message)) => return error(status, message),
    };
    if state.config.boxes.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            format!("box {name:?} is defined in the config file; register another name"),
        );
    }
    let spec = match parse_box_json(&name, &body).and_then(|spec| {
        refuse_code(&state.config, &body)?;
        Ok(spec)
    }) {
        Ok(spec) => spec,
        Err(message) => return error(StatusCode::UNPROCESSABLE_ENTITY, message),
    };
    if let Err((status, message)) = name_and_volumes_free(&state, &spec).await {
        return error(status, message);
    }
    if let Err(e) = state
        .store
        .register_box(&state.config.owner, &name, "api", Some(&body.to_string()))
        .await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let _ = state
        .store
        .record_event(
            &state.config.owner,
            Some(&name),
            EventKind::Registered,
            "registered through the API",
        )
        .await;
    state.wake.notify_one();
    (
        StatusCode::CREATED,
        Json(json!({ "name": name, "registered": true })),
    )
        .into_response()
}

/// Refuses a registration that would take over what another box has: a
/// box started by `up` from a config file (recorded as such, or running in
/// AWS without having been registered here) is never taken over (409), and a
/// volume another box names or holds is never named (422), before anything
/// is stored or launched.
async fn name_and_volumes_free(
    state: &ApiState,
    spec: &crate::config::BoxSpec,
) -> Result<(), (StatusCode, String)> {
    let managed = state
        .store
        .managed_boxes(&state.config.owner)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    name_free(state, &spec.name, &managed).await?;
    // The other boxes: the config's and the registered ones.
    let mut others: Vec<crate::config::BoxSpec> = state
        .config
        .boxes
        .values()
        .filter(|b| b.name != spec.name)
        .cloned()
        .collect();
    for b in managed
        .iter()
        .filter(|b| b.name != spec.name && !state.config.boxes.contains_key(&b.name))
    {
        if let Ok(Some(other)) = crate::desired::box_spec(&state.config, &b.name, b.spec.as_deref())
        {
            others.push(other);
        }
    }
    for (role, vs) in crate::persist::volume_specs(spec) {
        volume_free(state, spec, role, vs, &others).await?;
    }
    Ok(())
}

/// 409 when `name` is a box `up` started from a config file.
async fn name_free(
    state: &ApiState,
    name: &str,
    managed: &[crate::store::ManagedBox],
) -> Result<(), (StatusCode, String)> {
    let stopping = state
        .store
        .stop_job(&state.config.owner, name)
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if stopping.is_some_and(|j| j.open()) {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "box {name:?} is being stopped; register it again once its stop is done (GET it)"
            ),
        ));
    }
    let registered = managed.iter().find(|b| b.name == name);
    if let Some(b) = registered.filter(|b| b.source != "api") {
        return Err((
            StatusCode::CONFLICT,
            format!(
                "box {name:?} was started by `{}` from a config file; register another name",
                b.source
            ),
        ));
    }
    if registered.is_some() {
        return Ok(());
    }
    let running = state
        .cloud
        .instances(&crate::ownership::box_filter(&state.config.owner, name))
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    match running.iter().find(|i| i.state.is_live()) {
        Some(i) => Err((
            StatusCode::CONFLICT,
            format!(
                "box {name:?} runs already ({}), started from a config file; register another name",
                i.id
            ),
        )),
        None => Ok(()),
    }
}

/// 422 when volume `vs` is another box's: named by one of `others`, or
/// tagged in AWS for another box.
async fn volume_free(
    state: &ApiState,
    spec: &crate::config::BoxSpec,
    role: crate::persist::Role,
    vs: &crate::config::VolumeSpec,
    others: &[crate::config::BoxSpec],
) -> Result<(), (StatusCode, String)> {
    let taken = |whose: String| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "{}.name: volume {:?} is {whose}; a volume belongs to one box",
                role.key(),
                vs.name
            ),
        )
    };
    for other in others {
        if let Some((other_role, _)) = crate::persist::volume_specs(other)
            .into_iter()
            .find(|(_, o)| o.name == vs.name)
        {
            return Err(taken(format!(
                "box {:?}'s {} already",
                other.name,
                other_role.key()
            )));
        }
    }
    let tagged = state
        .cloud
        .volumes(&crate::ownership::owner_filter(&state.config.owner).with(tags::NAME, &vs.name))
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, e.to_string()))?;
    match tagged.iter().find_map(|v| {
        v.tags
            .get(tags::BOX)
            .filter(|b| **b != spec.name)
            .map(|b| (v, b))
    }) {
        Some((v, other)) => Err(taken(format!("box {other:?}'s ({})", v.id))),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    stop: bool,
}

async fn delete_box(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is stop=true|false",
        );
    };
    let managed = match state.store.managed_boxes(&state.config.owner).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(b) = managed.into_iter().find(|b| b.name == name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no managed box named {name:?}"),
        );
    };
    if !q.stop {
        return deregister(&state, &name).await;
    }
    // A stop the daemons can finish: they need the box's spec.
    match crate::desired::box_spec(&state.config, &name, b.spec.as_deref()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return error(
                StatusCode::CONFLICT,
                format!("box {name:?} is no longer in the config; stop it with the CLI"),
            );
        }
        Err(m) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored box is refused or does not parse: {m}"),
            );
        }
    }
    // Recorded, then done by the daemon (or the next one) as a job: a stop
    // takes minutes (instances going, snapshots), a request does not.
    let job = match state.store.request_stop(&state.config.owner, &name).await {
        Ok(j) => j,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(e) = state
        .store
        .record_event(
            &state.config.owner,
            Some(&name),
            EventKind::StopRequested,
            "stop asked through the API; the daemon runs it as a job (GET the box for its steps)",
        )
        .await
    {
        tracing::warn!("recording the stop request: {e}");
    }
    state.wake.notify_one();
    (
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, format!("/api/boxes/{name}"))],
        Json(json!({ "name": name, "stop": job })),
    )
        .into_response()
}

/// `DELETE /api/boxes/{name}` without `stop`: no longer managed, left running.
async fn deregister(state: &ApiState, name: &str) -> Response {
    // A box being stopped stays managed until its stop is done (the
    // daemons run the jobs of the boxes they manage).
    match state.store.deregister_box(&state.config.owner, name).await {
        Ok(true) => {
            Json(json!({ "name": name, "deregistered": true, "stopped": false })).into_response()
        }
        Ok(false) => match state.store.stop_job(&state.config.owner, name).await {
            Ok(Some(job)) if job.open() => error(
                StatusCode::CONFLICT,
                format!(
                    "box {name:?} is being stopped; it is no longer managed once its stop is done (GET it)"
                ),
            ),
            Ok(_) => error(
                StatusCode::NOT_FOUND,
                format!("no managed box named {name:?}"),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn pool_views(state: &ApiState, only: Option<&str>) -> Result<Vec<Value>, Response> {
    let (pools, _) = crate::desired::pools(&state.config, &state.store)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let pools: Vec<_> = pools
        .into_iter()
        .filter(|(p, _)| only.is_none_or(|n| p.name == n))
        .collect();
    if let Some(name) = only
        && pools.is_empty()
    {
        return Err(error(
            StatusCode::NOT_FOUND,
            format!("no pool named {name:?}"),
        ));
    }
    let views = crate::pools::view::view(
        state.cloud.as_ref(),
        &state.store,
        &state.config.owner,
        &pools,
        20,
    )
    .await
    .map_err(|e| error(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(views
        .into_iter()
        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
        .collect())
}

async fn list_pools(State(state): State<ApiState>) -> Response {
    match pool_views(&state, None).await {
        Ok(v) => Json(Value::Array(v)).into_response(),
        Err(r) => r,
    }
}

async fn get_pool(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match pool_views(&state, Some(&name)).await {
        Ok(mut v) => Json(v.pop().unwrap_or(Value::Null)).into_response(),
        Err(r) => r,
    }
}

/// Registers a pool, or updates one registered earlier (the config file's
/// pools are the file's to change).
async fn register_pool(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let (name, body) = match named_body(body, "pool") {
        Ok(nb) => nb,
        Err((status, message)) => return error(status, message),
    };
    if state.config.pools.contains_key(&name) || state.config.boxes.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            format!("{name:?} is defined in the config file; register another name"),
        );
    }
    if let Err(message) =
        crate::config::parse_pool_json(&name, &body).and_then(|_| refuse_code(&state.config, &body))
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, message);
    }
    if let Err(e) = state.store.pool_revived(&state.config.owner, &name).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let existed = match state.store.pools(&state.config.owner).await {
        Ok(p) => p.iter().any(|(n, _)| *n == name),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if let Err(e) = state
        .store
        .register_pool(&state.config.owner, &name, &body.to_string())
        .await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let kind = if existed {
        EventKind::Updated
    } else {
        EventKind::Registered
    };
    let _ = state
        .store
        .record_pool_event(
            &state.config.owner,
            &name,
            kind,
            &format!("{kind} through the API"),
        )
        .await;
    state.wake.notify_one();
    (
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(json!({ "name": name, kind.as_str(): true })),
    )
        .into_response()
}

/// Deregisters an API pool and takes its capacity down: open spot requests
/// cancelled, instances terminated (both found by the pool tag).
async fn delete_pool(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    if state.config.pools.contains_key(&name) {
        return error(
            StatusCode::CONFLICT,
            format!("pool {name:?} is defined in the config file; remove it there"),
        );
    }
    match state
        .store
        .deregister_pool(&state.config.owner, &name)
        .await
    {
        Ok(true) => {}
        Ok(false) => return error(StatusCode::NOT_FOUND, format!("no pool named {name:?}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    // The evidence the daemon needs to collect what this call may leave
    // (a terminate that fails below, a launch racing the deletion).
    if let Err(e) = state
        .store
        .pool_deleted(&state.config.owner, &name, "api")
        .await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    let filter = boxes::owner_filter(&state.config.owner).with(tags::POOL, &name);
    let down = async {
        let requests: Vec<_> = state
            .cloud
            .spot_requests(&filter)
            .await?
            .into_iter()
            .filter(|r| {
                matches!(
                    r.state,
                    spotkeeper_cloud::SpotRequestState::Open
                        | spotkeeper_cloud::SpotRequestState::Active
                )
            })
            .map(|r| r.id)
            .collect();
        if !requests.is_empty() {
            state.cloud.cancel_spot_requests(&requests).await?;
        }
        let instances: Vec<_> = state
            .cloud
            .instances(&filter)
            .await?
            .into_iter()
            .filter(|i| i.state.is_live())
            .map(|i| i.id)
            .collect();
        if !instances.is_empty() {
            state.cloud.terminate(&instances).await?;
        }
        Ok::<_, spotkeeper_cloud::CloudError>((requests.len(), instances.len()))
    };
    match down.await {
        Ok((cancelled, terminated)) => {
            let _ = state
                .store
                .record_pool_event(
                    &state.config.owner,
                    &name,
                    EventKind::Deleted,
                    &format!("deleted through the API: cancelled {cancelled} requests, terminated {terminated} instances"),
                )
                .await;
            Json(json!({ "name": name, "deleted": true, "cancelled": cancelled, "terminated": terminated }))
                .into_response()
        }
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!(
                "pool {name:?} deregistered, but taking it down failed (the daemon's cleanup retries): {e}"
            ),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(rename = "box")]
    box_name: Option<String>,
    limit: Option<i64>,
}

async fn events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: box=NAME, limit=1..1000",
        );
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be 1..1000");
    }
    match state
        .store
        .events(&state.config.owner, q.box_name.as_deref(), limit)
        .await
    {
        Ok(e) => Json(e).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChartQuery {
    #[serde(rename = "box")]
    box_name: Option<String>,
    pool: Option<String>,
    days: Option<u32>,
}

fn svg_response(body: String) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

/// The window of a chart: `days` (1-30, default 3) back from now.
fn chart_window(days: Option<u32>) -> Option<(i64, i64)> {
    let days = days.unwrap_or(3);
    let until = crate::store::unix_now();
    (1..=30)
        .contains(&days)
        .then(|| (until - i64::from(days) * 86_400, until))
}

/// The spot price of each offering a box (`?box=`) or pool (`?pool=`) may
/// use, over the last `days`, with its ceiling: an SVG chart.
async fn price_chart(
    State(state): State<ApiState>,
    query: Result<Query<ChartQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: box=NAME or pool=NAME, days=1..30",
        );
    };
    let Some((since, until)) = chart_window(q.days) else {
        return error(StatusCode::BAD_REQUEST, "days must be 1..30");
    };
    let (title, types, zones, ceiling) = match (&q.box_name, &q.pool) {
        (Some(name), None) => {
            let stored = match state.store.managed_boxes(&state.config.owner).await {
                Ok(m) => m.into_iter().find(|b| &b.name == name),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let Some(spec) = stored.and_then(|b| spec_of(&state, name, b.spec.as_deref())) else {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no managed box named {name:?}"),
                );
            };
            (
                format!("box {name}: spot price"),
                spec.instance_types,
                spec.launch.zones,
                Some(spec.max_price),
            )
        }
        (None, Some(name)) => {
            let pools = match crate::desired::pools(&state.config, &state.store).await {
                Ok((p, _)) => p,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            let Some((spec, _)) = pools.into_iter().find(|(p, _)| &p.name == name) else {
                return error(StatusCode::NOT_FOUND, format!("no pool named {name:?}"));
            };
            let types = spec.types.iter().map(|t| t.instance_type.clone()).collect();
            (
                format!("pool {name}: spot price"),
                types,
                spec.launch.zones,
                spec.max_price,
            )
        }
        _ => return error(StatusCode::BAD_REQUEST, "name one box=NAME or pool=NAME"),
    };
    let samples = match state.store.price_samples(since).await {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut series: Vec<crate::charts::Series> = Vec::new();
    for p in samples.into_iter().filter(|p| {
        types.contains(&p.instance_type) && zones.as_ref().is_none_or(|z| z.contains(&p.zone))
    }) {
        let label = format!("{} {}", p.instance_type, p.zone);
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((p.at, p.price)),
            None => series.push(crate::charts::Series {
                label,
                points: vec![(p.at, p.price)],
            }),
        }
    }
    svg_response(crate::charts::svg(&crate::charts::Chart {
        title: &title,
        unit: "USD/hour",
        series: &series,
        ceiling,
        since,
        until,
    }))
}

/// A pool's desired and current units over the last `days`: an SVG chart.
async fn pool_chart(
    State(state): State<ApiState>,
    query: Result<Query<ChartQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(ChartQuery {
        pool: Some(name),
        box_name: None,
        days,
    })) = query
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "query parameters: pool=NAME, days=1..30",
        );
    };
    let Some((since, until)) = chart_window(days) else {
        return error(StatusCode::BAD_REQUEST, "days must be 1..30");
    };
    let samples = match state
        .store
        .pool_samples(&state.config.owner, &name, since)
        .await
    {
        Ok(s) => s,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let series = [
        crate::charts::Series {
            label: "desired".into(),
            points: samples.iter().map(|&(t, d, _)| (t, d as f64)).collect(),
        },
        crate::charts::Series {
            label: "current".into(),
            points: samples.iter().map(|&(t, _, c)| (t, c as f64)).collect(),
        },
    ];
    svg_response(crate::charts::svg(&crate::charts::Chart {
        title: &format!("pool {name}: units"),
        unit: "units",
        series: &series,
        ceiling: None,
        since,
        until,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CostQuery {
    since: Option<String>,
}

/// `spotkeeper cost` over the API: `?since=30d` (at most a year).
async fn cost(
    State(state): State<ApiState>,
    query: Result<Query<CostQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "query parameters: since=DURATION");
    };
    let since = q.since.as_deref().unwrap_or("30d");
    let window = match humantime::parse_duration(since) {
        Ok(w) if w <= std::time::Duration::from_secs(366 * 86_400) => w,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "since must be a duration up to a year, like 30d or 12h",
            );
        }
    };
    let until = crate::store::unix_now();
    let from = until - i64::try_from(window.as_secs()).unwrap_or(0);
    match crate::cost::report(
        state.cloud.as_ref(),
        &state.store,
        &state.config,
        from,
        until,
    )
    .await
    {
        Ok(r) => Json(r).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The `[[notify]]` sinks: name, kind, events, how far delivery got and
/// the last failure. Never the URL or the secret.
async fn notify_sinks(State(state): State<ApiState>) -> Response {
    let cursors = match state.store.notify_cursors(&state.config.owner).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let sinks: Vec<Value> = state
        .config
        .notify
        .iter()
        .map(|s| {
            let cursor = cursors.iter().find(|(n, _)| n == &s.name).map(|(_, c)| c);
            json!({
                "name": s.name,
                "kind": s.kind,
                "host": crate::notify::origin(s.url.expose()),
                "events": s.events,
                "delivered_up_to": cursor.map(|c| c.last_event),
                "failed_attempts": cursor.map_or(0, |c| c.attempts),
                "last_error": cursor.and_then(|c| c.last_error.clone()),
            })
        })
        .collect();
    Json(sinks).into_response()
}

/// The daemons sharing the owner's work (seen within a lease) and the
/// leases each holds.
async fn daemons(State(state): State<ApiState>) -> Response {
    let now = crate::store::unix_now() * 1000;
    let owner = &state.config.owner;
    let since = now - state.config.lease.as_millis() as i64;
    let (daemons, leases) =
        match tokio::try_join!(state.store.daemons(owner, since), state.store.leases(owner)) {
            Ok(x) => x,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    let daemons: Vec<Value> = daemons
        .iter()
        .map(|d| {
            let held: Vec<&str> = leases
                .iter()
                .filter(|l| l.holder == d.id && l.expires_at >= now)
                .map(|l| l.subject.as_str())
                .collect();
            json!({
                "id": d.id,
                "host": d.host,
                "this": d.id == state.daemon_id,
                "started_at": d.started_at / 1000,
                "seen_at": d.seen_at / 1000,
                "leases": held,
            })
        })
        .collect();
    Json(json!({ "daemons": daemons, "leases": leases })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<i64>,
}

/// Every instance the daemon has seen (also those AWS no longer lists),
/// most recently seen first.
async fn instances(
    State(state): State<ApiState>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let limit = match query {
        Ok(Query(q)) => q.limit.unwrap_or(100),
        Err(_) => return error(StatusCode::BAD_REQUEST, "query parameters: limit=1..1000"),
    };
    if !(1..=1000).contains(&limit) {
        return error(StatusCode::BAD_REQUEST, "limit must be 1..1000");
    }
    match state.store.seen_instances(&state.config.owner, limit).await {
        Ok(i) => Json(i).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The shortest API token accepted, from the config, the environment or
/// the token file alike.
pub const MIN_TOKEN_LEN: usize = 16;

/// The token: `[api] token`, else `$SPOTKEEPER_API_TOKEN`, else the one in
/// `file` (which must be this user's, mode 0600), generated there on first
/// start.
pub fn load_or_make_token(
    config: &Config,
    env: Option<String>,
    file: &std::path::Path,
) -> std::io::Result<Secret> {
    if let Some(t) = &config.api_token {
        return Ok(t.clone());
    }
    if let Some(t) = env.filter(|t| !t.is_empty()) {
        if t.len() < MIN_TOKEN_LEN {
            return Err(std::io::Error::other(format!(
                "SPOTKEEPER_API_TOKEN must be at least {MIN_TOKEN_LEN} characters"
            )));
        }
        return Ok(Secret::new(t));
    }
    if let Ok(meta) = std::fs::symlink_metadata(file) {
        use std::os::unix::fs::MetadataExt as _;
        // Whoever else can read or replace the file has the token.
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if !meta.is_file() || meta.mode() & 0o077 != 0 || me.is_some_and(|me| meta.uid() != me) {
            return Err(std::io::Error::other(format!(
                "{} must be a regular file of this user with mode 0600 (it is {:o}, owner {}); fix it or remove it to have a new token made",
                file.display(),
                meta.mode() & 0o7777,
                meta.uid()
            )));
        }
        let t = std::fs::read_to_string(file)?.trim().to_owned();
        if t.len() >= MIN_TOKEN_LEN {
            return Ok(Secret::new(t));
        }
        return Err(std::io::Error::other(format!(
            "{} holds a token shorter than {MIN_TOKEN_LEN} characters",
            file.display()
        )));
    }
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = [0u8; 24];
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    std::io::Read::read_exact(&mut urandom, &mut bytes)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(token.as_bytes())?;
    Ok(Secret::new(token))
}

/// A client has this long to send a request's headers: a connection that
/// trickles them (slowloris) is closed instead of holding a slot.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One request, body and answer included: every route answers from the
/// state file or one AWS call, in well under this.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Connections served at once; more are closed on accept. The API serves a
/// few people and a Prometheus scraper, not the internet.
pub const MAX_CONNECTIONS: usize = 64;

/// The HTTP server's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read: std::time::Duration,
    /// See [`REQUEST_TIMEOUT`].
    pub request: std::time::Duration,
    /// See [`MAX_CONNECTIONS`].
    pub connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read: HEADER_READ_TIMEOUT,
            request: REQUEST_TIMEOUT,
            connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves the API on `listener` until `shutdown` flips, with the default
/// [`Limits`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    serve_with(listener, state, shutdown, Limits::default()).await
}

/// Serves the API with a header-read timeout, a request timeout and a
/// connection limit (hyper directly: `axum::serve` has none of the three).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ApiState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    limits: Limits,
) -> std::io::Result<()> {
    let request = limits.request;
    let app = router(state).layer(middleware::from_fn(
        move |req: axum::extract::Request, next: middleware::Next| async move {
            match tokio::time::timeout(request, next.run(req)).await {
                Ok(r) => r,
                Err(_) => error(StatusCode::REQUEST_TIMEOUT, "the request took too long"),
            }
        },
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            // (The guard `wait_for` returns is not Send: dropped inside.)
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    tracing::warn!("accepting an API connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "API connection refused: {} already open", limits.connections);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "API connection ended: {e}");
            }
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    // Requests in flight get a moment; then the connections are dropped.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}
