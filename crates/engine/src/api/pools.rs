//! `/api/pools`: list, show, register (demand only from allowed hosts) and
//! delete (the pool's instances and requests go with it).

use super::*;

pub(super) async fn pool_views(state: &ApiState, only: Option<&str>) -> ApiResult<Vec<Value>> {
    let (pools, _) = crate::desired::pools(&state.config, &state.store).await?;
    let pools: Vec<_> = pools
        .into_iter()
        .filter(|(p, _)| only.is_none_or(|n| p.name == n))
        .collect();
    if let Some(name) = only
        && pools.is_empty()
    {
        return Err(ApiError::not_found(format!("no pool named {name:?}")));
    }
    // The daemon's last observation, borrowed: nothing described, nothing copied.
    let seen = state.seen.get();
    let (observed_at, instances, requests): (Option<i64>, &[_], &[_]) = match &seen {
        Some((at, obs)) => (
            Some(crate::store::unix_seconds(*at)),
            &obs.instances,
            &obs.requests,
        ),
        None => (None, &[], &[]),
    };
    let views = crate::pools::view::view_of(
        instances,
        requests,
        observed_at,
        &state.store,
        &state.config.owner,
        &pools,
        20,
    )
    .await
    .map_err(|e| ApiError::bad_gateway(e.to_string()))?;
    Ok(views
        .into_iter()
        .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
        .collect())
}

pub(super) async fn list_pools(State(state): State<ApiState>) -> ApiResult {
    let views = pool_views(&state, None).await?;
    Ok(Json(Value::Array(views)).into_response())
}

pub(super) async fn get_pool(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    let mut views = pool_views(&state, Some(&name)).await?;
    Ok(Json(views.pop().unwrap_or(Value::Null)).into_response())
}

/// Registers a pool, or updates one registered earlier (the config file's
/// pools are the file's to change).
pub(super) async fn register_pool(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let (name, body) = named_body(body, "pool")?;
    if state.config.pools.contains_key(&name) || state.config.boxes.contains_key(&name) {
        return Err(ApiError::conflict(format!(
            "{name:?} is defined in the config file; register another name"
        )));
    }
    crate::config::parse_pool_json(&name, &body)
        .and_then(|_| refuse_code(&state.config, &body))
        .map_err(ApiError::unprocessable)?;
    state.owned().pool_revived(&name).await?;
    let existed = (state.owned().pools().await?)
        .iter()
        .any(|(n, _)| *n == name);
    state
        .owned()
        .register_pool(&name, &body.to_string())
        .await?;
    let kind = if existed {
        EventKind::Updated
    } else {
        EventKind::Registered
    };
    let _ = state
        .owned()
        .record_pool_event(&name, kind, &format!("{kind} through the API"))
        .await;
    state.wake.notify_one();
    Ok((
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Json(json!({ "name": name, kind.as_str(): true })),
    )
        .into_response())
}

/// Deregisters an API pool and takes its capacity down: open spot requests
/// cancelled, instances terminated (both found by the pool tag).
pub(super) async fn delete_pool(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> ApiResult {
    if state.config.pools.contains_key(&name) {
        return Err(ApiError::conflict(format!(
            "pool {name:?} is defined in the config file; remove it there"
        )));
    }
    if !state.owned().deregister_pool(&name).await? {
        return Err(ApiError::not_found(format!("no pool named {name:?}")));
    }
    // The evidence the daemon needs to collect what this call may leave
    // (a terminate that fails below, a launch racing the deletion).
    state.owned().pool_deleted(&name, "api").await?;
    match crate::pools::take_down(state.cloud.as_ref(), &state.config.owner, &name).await {
        Ok((cancelled, terminated)) => {
            let _ = state.owned().record_pool_event(&name,
                    EventKind::Deleted,
                    &format!("deleted through the API: cancelled {cancelled} requests, terminated {terminated} instances"),
                )
                .await;
            Ok(Json(json!({ "name": name, "deleted": true, "cancelled": cancelled, "terminated": terminated }))
                .into_response())
        }
        Err(e) => Err(ApiError::bad_gateway(format!(
            "pool {name:?} deregistered, but taking it down failed (the daemon's cleanup retries): {e}"
        ))),
    }
}
