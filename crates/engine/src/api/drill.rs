//! `POST /api/boxes/NAME/drill[?rebalance=true]`: the API's `drill`. The
//! warning goes into the daemon's own queue, for the live instance the
//! daemon last observed (no describe); the answer (202) names the event, and
//! the recovery is followed in `/api/events` like a real one. One drill per
//! box a minute: a token is not a way to make the daemon replace a box over
//! and over.

use super::*;

/// How long after a drill of a box another one is refused.
pub const DRILL_EVERY: i64 = 60;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DrillQuery {
    #[serde(default)]
    rebalance: bool,
}

pub(super) async fn drill_box(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<DrillQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is rebalance=true|false",
        );
    };
    let owner = &state.config.owner;
    let managed = match state.store.managed_boxes(owner).await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if !managed.iter().any(|b| b.name == name) {
        return error(
            StatusCode::NOT_FOUND,
            format!("no managed box named {name:?}"),
        );
    }
    let recent = match state.store.events(owner, Some(&name), 50).await {
        Ok(e) => e,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let now = crate::store::unix_now();
    if recent
        .iter()
        .any(|e| e.kind == EventKind::Drill.as_str() && now - e.at < DRILL_EVERY)
    {
        return error(
            StatusCode::CONFLICT,
            format!("box {name} had a drill less than {DRILL_EVERY} s ago; let it recover first"),
        );
    }
    let (_, live) = live(&state);
    let Some(instance) = live
        .iter()
        .find(|i| i.tag(tags::BOX) == Some(name.as_str()))
    else {
        return error(
            StatusCode::CONFLICT,
            format!("box {name} has no live instance the daemon has seen"),
        );
    };
    if instance.market != spotkeeper_cloud::Market::Spot {
        return error(
            StatusCode::CONFLICT,
            format!(
                "box {name} runs {} on {}: AWS sends spot warnings only to spot instances",
                instance.market, instance.id
            ),
        );
    }
    let Some(queue) = state.queue.get() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon has not opened its event queue yet",
        );
    };
    let id = format!(
        "{}{}",
        crate::drill::DRILL_PREFIX,
        spotkeeper_cloud::model::random_token()
    );
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let body = crate::drill::warning_event(
        &id,
        instance.id.as_str(),
        state.cloud.region(),
        queue.account().as_deref(),
        &time,
        q.rebalance,
    );
    // Recorded first: a second drill is refused even if this one's send is slow.
    let what = format!(
        "drill: {} for {} sent through the API (event {id})",
        if q.rebalance {
            "rebalance recommendation"
        } else {
            "spot interruption warning"
        },
        instance.id
    );
    if let Err(e) = state
        .store
        .record_event(owner, Some(&name), EventKind::Drill, &what)
        .await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    if let Err(e) = queue.send(&body).await {
        return error(
            StatusCode::BAD_GATEWAY,
            format!("the warning could not be sent: {e}"),
        );
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({ "box": name, "instance_id": instance.id, "event_id": id })),
    )
        .into_response()
}
