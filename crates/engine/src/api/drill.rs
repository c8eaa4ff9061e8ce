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
) -> ApiResult {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "the only query parameter is rebalance=true|false",
        ));
    };
    let instance = may_drill(&state, &name).await?;
    let Some(queue) = state.queue.get() else {
        return Err(ApiError::unavailable(
            "the daemon has not opened its event queue yet",
        ));
    };
    let drill = crate::drill::Drill::new(
        instance.id.as_str(),
        state.cloud.region(),
        queue.account().as_deref(),
        q.rebalance,
    );
    // Recorded first: a second drill is refused even if this one's send is slow.
    let what = format!(
        "drill: {} for {} sent through the API (event {})",
        drill.what, instance.id, drill.id
    );
    state
        .owned()
        .record_event(Some(&name), EventKind::Drill, &what)
        .await?;
    queue
        .send(&drill.body)
        .await
        .map_err(|e| ApiError::bad_gateway(format!("the warning could not be sent: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "box": name, "instance_id": instance.id, "event_id": drill.id })),
    )
        .into_response())
}

/// The live spot instance the daemon last saw of a managed box without a
/// drill in the last [`DRILL_EVERY`] seconds.
async fn may_drill(state: &ApiState, name: &str) -> ApiResult<spotkeeper_cloud::Instance> {
    let managed = state.owned().managed_boxes().await?;
    if !managed.iter().any(|b| b.name == name) {
        return Err(ApiError::not_found(format!(
            "no managed box named {name:?}"
        )));
    }
    let recent = state.owned().events(Some(name), 50).await?;
    let now = crate::store::unix_now();
    if recent
        .iter()
        .any(|e| e.kind == EventKind::Drill.as_str() && now - e.at < DRILL_EVERY)
    {
        return Err(ApiError::conflict(format!(
            "box {name} had a drill less than {DRILL_EVERY} s ago; let it recover first"
        )));
    }
    let (_, live) = live(state);
    let Some(instance) = live.into_iter().find(|i| i.tag(tags::BOX) == Some(name)) else {
        return Err(ApiError::conflict(format!(
            "box {name} has no live instance the daemon has seen"
        )));
    };
    if instance.market != spotkeeper_cloud::Market::Spot {
        return Err(ApiError::conflict(format!(
            "box {name} runs {} on {}: AWS sends spot warnings only to spot instances",
            instance.market, instance.id
        )));
    }
    Ok(instance)
}
