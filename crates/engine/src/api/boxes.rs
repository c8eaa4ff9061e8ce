//! `/api/boxes`: list, show, register (a box another owns, or naming another
//! box's volume, is refused) and delete (deregister, or a stop job).

use super::*;

/// The latest recorded spot price of each offering.
pub(super) async fn latest_prices(
    state: &ApiState,
) -> std::collections::BTreeMap<spotkeeper_cloud::Offering, f64> {
    // One row per offering (latest_prices), not a scan of every sample, on
    // each 5 s refresh.
    state
        .store
        .latest_prices()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            (
                spotkeeper_cloud::Offering::spot(&p.instance_type, &p.zone),
                p.price,
            )
        })
        .collect()
}

/// A box's DNS status for the API: as the daemon left it for the instance
/// shown (settled, healed), else read from Route 53 and cached while fresh
/// and about the same instance.
pub(super) async fn dns_json(
    state: &ApiState,
    spec: &crate::config::BoxSpec,
    instance: Option<&spotkeeper_cloud::Instance>,
) -> Value {
    // As the daemon left it for this instance: no Route 53 call.
    if let Some(seen) = state.seen.dns(&spec.name)
        && instance.is_some_and(|i| i.id == seen.instance)
    {
        return json!({ "name": seen.name, "matches": seen.matches, "owned": seen.owned });
    }
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

pub(super) async fn box_json(
    state: &ApiState,
    name: &str,
    source: &str,
    stored: Option<&str>,
    (observed_at, live): (Option<i64>, &[spotkeeper_cloud::Instance]),
    prices: &std::collections::BTreeMap<spotkeeper_cloud::Offering, f64>,
) -> Value {
    // At home, or (a box that failed over) in another region.
    let away = state.seen.away(name);
    let instance = live
        .iter()
        .find(|i| i.tag(tags::BOX) == Some(name))
        .or(away.as_ref());
    let spec = spec_of(state, name, stored);
    let price = instance.and_then(|i| {
        prices
            .get(&spotkeeper_cloud::Offering::spot(
                &i.instance_type,
                i.zone.as_deref()?,
            ))
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
        "region": instance
            .and_then(|i| i.zone.as_deref())
            .map(crate::failover::region_of_zone),
        "away": away.is_some(),
        "market": instance.map(|i| i.market.as_str()),
        "public_ip": instance.and_then(|i| i.public_ip.clone()),
        "private_ip": instance.and_then(|i| i.private_ip.clone()),
        "in_config": state.config.boxes.contains_key(name),
        "observed_at": observed_at,
        "replicas": replica_json(state, name),
    })
}

/// Per other region: the newest completed replica's time, whether a copy is
/// under way, and what a failover there now would lose.
fn replica_json(state: &ApiState, name: &str) -> Value {
    let now = crate::store::unix_now();
    state
        .seen
        .recovery(name)
        .into_iter()
        .map(|p| {
            let point = p.taken_at.map(|t| now - t);
            json!({
                "region": p.region,
                "taken_at": p.taken_at,
                "copying": p.copying,
                "recovery_point_seconds": point,
                "says": crate::replicate::describe_recovery_point(&p.region, point),
            })
        })
        .collect()
}

/// The live instances of the daemon's last observation, and when it was
/// made (unix seconds; none before its first pass): no describe of its own.
pub(super) fn live(state: &ApiState) -> (Option<i64>, Vec<spotkeeper_cloud::Instance>) {
    match state.seen.get() {
        Some((at, obs)) => (
            Some(crate::store::unix_seconds(at)),
            // Boxes' only: a pool's thousands of instances are not copied.
            crate::boxes::live_sorted(
                obs.instances
                    .iter()
                    .filter(|i| i.tag(tags::BOX).is_some())
                    .cloned(),
            ),
        ),
        None => (None, Vec::new()),
    }
}

pub(super) async fn list_boxes(State(state): State<ApiState>) -> ApiResult {
    let managed = state.owned().managed_boxes().await?;
    let (observed_at, live) = live(&state);
    let prices = latest_prices(&state).await;
    let mut out = Vec::new();
    for b in &managed {
        out.push(
            box_json(
                &state,
                &b.name,
                &b.source,
                b.spec.as_deref(),
                (observed_at, &live),
                &prices,
            )
            .await,
        );
    }
    Ok(Json(Value::Array(out)).into_response())
}

pub(super) async fn get_box(State(state): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    let managed = state.owned().managed_boxes().await?;
    let stop = state.owned().stop_job(&name).await?;
    let Some(b) = managed.iter().find(|b| b.name == name) else {
        // A box whose stop is done: what the stop did.
        return match stop {
            Some(job) => {
                Ok(Json(json!({ "name": name, "managed": false, "stop": job })).into_response())
            }
            None => Err(ApiError::not_found(format!(
                "no managed box named {name:?}"
            ))),
        };
    };
    let (observed_at, live) = live(&state);
    let prices = latest_prices(&state).await;
    let mut body = box_json(
        &state,
        &b.name,
        &b.source,
        b.spec.as_deref(),
        (observed_at, &live),
        &prices,
    )
    .await;
    if let Some(job) = stop.filter(StopJob::open) {
        body["stop"] = json!(job);
    }
    Ok(Json(body).into_response())
}

pub(super) async fn register_box(
    State(state): State<ApiState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult {
    let (name, body) = named_body(body, "box")?;
    if state.config.boxes.contains_key(&name) {
        return Err(ApiError::conflict(format!(
            "box {name:?} is defined in the config file; register another name"
        )));
    }
    let spec = parse_box_json(&name, &body)
        .and_then(|spec| {
            refuse_code(&state.config, &body)?;
            Ok(spec)
        })
        .map_err(ApiError::unprocessable)?;
    name_and_volumes_free(&state, &spec).await?;
    state
        .owned()
        .register_box(&name, "api", Some(&body.to_string()))
        .await?;
    let _ = state
        .owned()
        .record_event(
            Some(&name),
            EventKind::Registered,
            "registered through the API",
        )
        .await;
    state.wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": name, "registered": true })),
    )
        .into_response())
}

/// Refuses a registration that would take over what another box has: a
/// box started by `up` from a config file (recorded as such, or running in
/// AWS without having been registered here) is never taken over (409), and a
/// volume another box names or holds is never named (422), before anything
/// is stored or launched.
pub(super) async fn name_and_volumes_free(
    state: &ApiState,
    spec: &crate::config::BoxSpec,
) -> ApiResult<()> {
    let managed = state.owned().managed_boxes().await?;
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
pub(super) async fn name_free(
    state: &ApiState,
    name: &str,
    managed: &[crate::store::ManagedBox],
) -> ApiResult<()> {
    let stopping = state.owned().stop_job(name).await?;
    if stopping.is_some_and(|j| j.open()) {
        return Err(ApiError::conflict(format!(
            "box {name:?} is being stopped; register it again once its stop is done (GET it)"
        )));
    }
    let registered = managed.iter().find(|b| b.name == name);
    if let Some(b) = registered.filter(|b| b.source != "api") {
        return Err(ApiError::conflict(format!(
            "box {name:?} was started by `{}` from a config file; register another name",
            b.source
        )));
    }
    if registered.is_some() {
        return Ok(());
    }
    let running = state
        .cloud
        .instances(&crate::ownership::box_filter(&state.config.owner, name))
        .await?;
    match running.iter().find(|i| i.state.is_live()) {
        Some(i) => Err(ApiError::conflict(format!(
            "box {name:?} runs already ({}), started from a config file; register another name",
            i.id
        ))),
        None => Ok(()),
    }
}

/// 422 when volume `vs` is another box's: named by one of `others`, or
/// tagged in AWS for another box.
pub(super) async fn volume_free(
    state: &ApiState,
    spec: &crate::config::BoxSpec,
    role: crate::persist::Role,
    vs: &crate::config::VolumeSpec,
    others: &[crate::config::BoxSpec],
) -> ApiResult<()> {
    let taken = |whose: String| {
        ApiError::unprocessable(format!(
            "{}.name: volume {:?} is {whose}; a volume belongs to one box",
            role.key(),
            vs.name
        ))
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
        .await?;
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
pub(super) struct DeleteQuery {
    #[serde(default)]
    stop: bool,
}

pub(super) async fn delete_box(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    query: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "the only query parameter is stop=true|false",
        ));
    };
    let managed = state.owned().managed_boxes().await?;
    let Some(b) = managed.into_iter().find(|b| b.name == name) else {
        return Err(ApiError::not_found(format!(
            "no managed box named {name:?}"
        )));
    };
    if !q.stop {
        return deregister(&state, &name).await;
    }
    // A stop the daemons can finish: they need the box's spec.
    match crate::desired::box_spec(&state.config, &name, b.spec.as_deref()) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(ApiError::conflict(format!(
                "box {name:?} is no longer in the config; stop it with the CLI"
            )));
        }
        Err(m) => {
            return Err(ApiError::internal(format!(
                "stored box is refused or does not parse: {m}"
            )));
        }
    }
    // Recorded, then done by the daemon (or the next one) as a job: a stop
    // takes minutes (instances going, snapshots), a request does not.
    let job = state.owned().request_stop(&name).await?;
    if let Err(e) = state
        .owned()
        .record_event(
            Some(&name),
            EventKind::StopRequested,
            "stop asked through the API; the daemon runs it as a job (GET the box for its steps)",
        )
        .await
    {
        tracing::warn!("recording the stop request: {e}");
    }
    state.wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        [(axum::http::header::LOCATION, format!("/api/boxes/{name}"))],
        Json(json!({ "name": name, "stop": job })),
    )
        .into_response())
}

/// `DELETE /api/boxes/{name}` without `stop`: no longer managed, left running.
pub(super) async fn deregister(state: &ApiState, name: &str) -> ApiResult {
    // A box being stopped stays managed until its stop is done (the
    // daemons run the jobs of the boxes they manage).
    if state.owned().deregister_box(name).await? {
        return Ok(
            Json(json!({ "name": name, "deregistered": true, "stopped": false })).into_response(),
        );
    }
    match state.owned().stop_job(name).await? {
        Some(job) if job.open() => Err(ApiError::conflict(format!(
            "box {name:?} is being stopped; it is no longer managed once its stop is done (GET it)"
        ))),
        _ => Err(ApiError::not_found(format!(
            "no managed box named {name:?}"
        ))),
    }
}
