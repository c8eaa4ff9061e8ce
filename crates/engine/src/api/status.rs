//! What the dashboard and scripts read: the event log, cost, notification
//! sinks, the daemons sharing the database, the instances seen.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    #[serde(rename = "box")]
    box_name: Option<String>,
    limit: Option<i64>,
}

pub(super) async fn events(
    State(state): State<ApiState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "query parameters: box=NAME, limit=1..1000",
        ));
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..1000"));
    }
    let events = state.owned().events(q.box_name.as_deref(), limit).await?;
    Ok(Json(events).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CostQuery {
    since: Option<String>,
}

/// `spotkeeper cost` over the API: `?since=30d` (at most a year).
pub(super) async fn cost(
    State(state): State<ApiState>,
    query: Result<Query<CostQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request("query parameters: since=DURATION"));
    };
    let since = q.since.as_deref().unwrap_or("30d");
    let window = match humantime::parse_duration(since) {
        Ok(w) if w <= std::time::Duration::from_secs(366 * 86_400) => w,
        _ => {
            return Err(ApiError::bad_request(
                "since must be a duration up to a year, like 30d or 12h",
            ));
        }
    };
    let until = crate::store::unix_now();
    let from = until - i64::try_from(window.as_secs()).unwrap_or(0);
    let report = crate::cost::report(
        state.cloud.as_ref(),
        &state.store,
        &state.config,
        from,
        until,
    )
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(report).into_response())
}

/// Each box's savings over the cost window, for the metrics: from the same
/// report as `cost`, bounded in time (an on-demand price that cannot be read
/// must not hold it); on failure the last figures stay.
pub(super) async fn refresh_savings(state: &ApiState) {
    let until = crate::store::unix_now();
    let report = crate::cost::report(
        state.cloud.as_ref(),
        &state.store,
        &state.config,
        until - crate::cost::HISTORY,
        until,
    );
    let bound = std::time::Duration::from_secs(60);
    let computed = tokio::time::timeout(bound, report).await;
    state.metrics.savings_finished();
    match computed {
        Ok(Ok(r)) => state.metrics.set_savings(
            &r.lines
                .iter()
                .filter_map(|l| Some((l.subject.strip_prefix("box ")?.to_owned(), l.savings?)))
                .collect::<Vec<_>>(),
        ),
        Ok(Err(e)) => tracing::warn!("the savings for the metrics: {e}"),
        Err(_) => tracing::warn!("the savings for the metrics took over 60 s; kept the last"),
    }
}

/// The `[[notify]]` sinks: name, kind, events, how far delivery got and
/// the last failure. Never the URL or the secret.
pub(super) async fn notify_sinks(State(state): State<ApiState>) -> ApiResult {
    let cursors = state.owned().notify_cursors().await?;
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
    Ok(Json(sinks).into_response())
}

/// The daemons sharing the owner's work (seen within a lease) and the
/// leases each holds.
pub(super) async fn daemons(State(state): State<ApiState>) -> ApiResult {
    let now = crate::store::unix_now() * 1000;
    let since = now - state.config.lease.as_millis() as i64;
    let (daemons, leases) = tokio::try_join!(state.owned().daemons(since), state.owned().leases())?;
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
    Ok(Json(json!({ "daemons": daemons, "leases": leases })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitQuery {
    limit: Option<i64>,
}

/// Every instance the daemon has seen (also those AWS no longer lists),
/// most recently seen first.
pub(super) async fn instances(
    State(state): State<ApiState>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let limit = match query {
        Ok(Query(q)) => q.limit.unwrap_or(100),
        Err(_) => return Err(ApiError::bad_request("query parameters: limit=1..1000")),
    };
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1..1000"));
    }
    let seen = state.owned().seen_instances(limit).await?;
    Ok(Json(seen).into_response())
}
