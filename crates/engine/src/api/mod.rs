//! The daemon's HTTP API (axum), bound to loopback by default. `/healthz`
//! is open; every `/api` route needs `Authorization: Bearer <token>`.
//! Bad requests get a JSON error (`{"error": "..."}`) and a 4xx status;
//! nothing a client sends can panic the daemon.
//!
//! Here: the state, the router and the token check; the handlers by what
//! they serve in `boxes`, `pools`, `status` and `charts`; their one error
//! type in `error`; the token file in `token`; the server and its limits in
//! `server`.

use crate::config::{Config, Secret, parse_box_json, refuse_code};
use crate::event_kind::EventKind;
use crate::store::{StopJob, Store};
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
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::sync::Notify;

mod boxes;
mod charts;
mod drill;
mod error;
mod pools;
mod server;
mod status;
mod token;

pub use error::{ApiError, ApiResult};
pub use server::{
    HEADER_READ_TIMEOUT, Limits, MAX_CONNECTIONS, REQUEST_TIMEOUT, serve, serve_with,
};
pub use token::{MIN_TOKEN_LEN, load_or_make_token};

// The handlers the router names, from the modules beside this one.
use self::boxes::*;
use self::charts::*;
use self::drill::*;
use self::pools::*;
use self::status::*;

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
    /// The daemon's last observation: the boxes and pools shown come from
    /// it, not from a describe per request ([`crate::daemon::seen`]).
    pub seen: crate::daemon::seen::LastSeen,
    /// What each box's DNS record said lately: the dashboard refreshes every
    /// few seconds, and Route53 allows five requests a second per account.
    pub dns_cache: DnsCache,
    /// The event queue, once the daemon has opened it (drills go into it).
    pub queue: QueueSlot,
}

/// The event queue as the API sees it: set once the daemon opened it.
pub type QueueSlot = Arc<std::sync::OnceLock<Arc<dyn spotkeeper_cloud::EventQueue>>>;

/// Box name → (when read, for which instance, the status as JSON).
pub type DnsCache =
    Arc<std::sync::Mutex<HashMap<String, (std::time::Instant, Option<String>, Value)>>>;

/// How long a box's DNS status is served from [`ApiState::dns_cache`].
const DNS_STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl ApiState {
    /// The store as the config's owner sees it.
    fn owned(&self) -> crate::store::OwnerStore<'_> {
        self.store.for_owner(&self.config.owner)
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("owner", &self.config.owner)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/boxes", get(list_boxes).post(register_box))
        .route("/boxes/{name}", get(get_box).delete(delete_box))
        .route("/boxes/{name}/drill", axum::routing::post(drill_box))
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
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The web page: static, it asks for the token and reads the API itself,
/// so it shows nothing to someone without the token.
pub const PAGE: &str = include_str!("../../web/index.html");

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn metrics(State(state): State<ApiState>) -> Response {
    // In the background: a scrape answers at once, with the last figures.
    if state.metrics.savings_due(state.config.interval) {
        let state = state.clone();
        tokio::spawn(async move { status::refresh_savings(&state).await });
    }
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
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>",
        )
        .into_response(),
        Some(t) if bool::from(t.as_bytes().ct_eq(state.token.expose().as_bytes())) => {
            next.run(request).await
        }
        Some(_) => ApiError::new(StatusCode::FORBIDDEN, "wrong token").into_response(),
    }
}

/// A managed box's spec: the config's, else the stored one (checked again);
/// `None` when the stored one does not parse.
fn spec_of(state: &ApiState, name: &str, stored: Option<&str>) -> Option<crate::config::BoxSpec> {
    crate::desired::box_spec(&state.config, name, stored)
        .ok()
        .flatten()
}

/// A registration body: a JSON object with a string `name`, returned apart
/// from the other fields.
fn named_body(body: Result<Json<Value>, JsonRejection>, kind: &str) -> ApiResult<(String, Value)> {
    let Json(mut body) = body.map_err(|e| {
        ApiError::new(
            e.status(),
            format!("the body is not a JSON {kind}: {}", e.body_text()),
        )
    })?;
    let Some(object) = body.as_object_mut() else {
        return Err(ApiError::unprocessable("the body must be a JSON object"));
    };
    match object.remove("name") {
        Some(Value::String(name)) => Ok((name, body)),
        _ => Err(ApiError::unprocessable("name: required, a string")),
    }
}
