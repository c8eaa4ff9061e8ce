//! `/api/charts`: SVG charts of a box's spot prices and a pool's size.

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChartQuery {
    #[serde(rename = "box")]
    box_name: Option<String>,
    pool: Option<String>,
    days: Option<u32>,
}

pub(super) fn svg_response(body: String) -> Response {
    ([(axum::http::header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

/// The window of a chart: `days` (1-30, default 3) back from now.
pub(super) fn chart_window(days: Option<u32>) -> Option<(i64, i64)> {
    let days = days.unwrap_or(3);
    let until = crate::store::unix_now();
    (1..=30)
        .contains(&days)
        .then(|| (until - i64::from(days) * 86_400, until))
}

/// The spot price of each offering a box (`?box=`) or pool (`?pool=`) may
/// use, over the last `days`, with its ceiling: an SVG chart.
pub(super) async fn price_chart(
    State(state): State<ApiState>,
    query: Result<Query<ChartQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Ok(Query(q)) = query else {
        return Err(ApiError::bad_request(
            "query parameters: box=NAME or pool=NAME, days=1..30",
        ));
    };
    let Some((since, until)) = chart_window(q.days) else {
        return Err(ApiError::bad_request("days must be 1..30"));
    };
    let (title, types, zones, ceiling) = match (&q.box_name, &q.pool) {
        (Some(name), None) => {
            let stored = (state.owned().managed_boxes().await?)
                .into_iter()
                .find(|b| &b.name == name);
            let Some(spec) = stored.and_then(|b| spec_of(&state, name, b.spec.as_deref())) else {
                return Err(ApiError::not_found(format!(
                    "no managed box named {name:?}"
                )));
            };
            (
                format!("box {name}: spot price"),
                spec.instance_types,
                spec.launch.zones,
                Some(spec.max_price),
            )
        }
        (None, Some(name)) => {
            let (pools, _) = crate::desired::pools(&state.config, &state.store).await?;
            let Some((spec, _)) = pools.into_iter().find(|(p, _)| &p.name == name) else {
                return Err(ApiError::not_found(format!("no pool named {name:?}")));
            };
            let types = spec.types.iter().map(|t| t.instance_type.clone()).collect();
            (
                format!("pool {name}: spot price"),
                types,
                spec.launch.zones,
                spec.max_price,
            )
        }
        _ => return Err(ApiError::bad_request("name one box=NAME or pool=NAME")),
    };
    let samples = samples_of(&state, &types, since).await?;
    let mut series: Vec<crate::charts::Series> = Vec::new();
    for p in samples
        .into_iter()
        .filter(|p| zones.as_ref().is_none_or(|z| z.contains(&p.zone)))
    {
        let label = format!("{} {}", p.instance_type, p.zone);
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((p.at, p.price)),
            None => series.push(crate::charts::Series {
                label,
                points: vec![(p.at, p.price)],
            }),
        }
    }
    Ok(svg_response(crate::charts::svg(&crate::charts::Chart {
        title: &title,
        unit: "USD/hour",
        series: &series,
        ceiling,
        since,
        until,
    })))
}

/// The samples of the chart's types only: a region's every offering is
/// 500,000 samples a week at one reading per offering every ten minutes.
async fn samples_of(
    state: &ApiState,
    types: &[String],
    since: i64,
) -> Result<Vec<crate::store::PriceSample>, crate::store::StoreError> {
    let mut samples = Vec::new();
    for t in types {
        samples.extend(state.store.price_samples_of(t, since).await?);
    }
    Ok(samples)
}

/// A pool's desired and current units over the last `days`: an SVG chart.
pub(super) async fn pool_chart(
    State(state): State<ApiState>,
    query: Result<Query<ChartQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Ok(Query(ChartQuery {
        pool: Some(name),
        box_name: None,
        days,
    })) = query
    else {
        return Err(ApiError::bad_request(
            "query parameters: pool=NAME, days=1..30",
        ));
    };
    let Some((since, until)) = chart_window(days) else {
        return Err(ApiError::bad_request("days must be 1..30"));
    };
    let samples = state.owned().pool_samples(&name, since).await?;
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
    Ok(svg_response(crate::charts::svg(&crate::charts::Chart {
        title: &format!("pool {name}: units"),
        unit: "units",
        series: &series,
        ceiling: None,
        since,
        until,
    })))
}
