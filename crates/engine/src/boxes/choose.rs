//! Which offering a box launches in: the spot offerings of its zones under
//! the ceiling (none interrupted in the last minutes, unless all were), in
//! the order of the box's `strategy` ([`crate::rank`]), with why.

use std::collections::HashSet;

use super::{Avoid, BoxError, Ctx, Known, box_prices};
use crate::config::{BoxSpec, PriceCap};
use crate::plan;
use crate::rank::{Offer, Ranked, Strategy, rank};

/// A (type, zone) to try, in order; `zone` is `None` when AWS may choose.
pub(super) struct Target {
    pub(super) instance_type: String,
    pub(super) zone: Option<String>,
    /// The box's subnet in that zone, if it has subnets.
    pub(super) subnet: Option<String>,
}

/// The spot offerings in `zones` under the ceiling, cheapest first; every
/// one interrupted lately beats leaving the box down.
pub(super) async fn spot_targets(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    avoid: &Avoid,
    known: Option<&Known>,
    zones: &[String],
) -> Result<Vec<Target>, BoxError> {
    let prices = match known {
        Some(k) => {
            let mut p = k.prices.clone();
            p.retain(|x| zones.contains(&x.zone));
            plan::sort_prices(&mut p, &spec.instance_types);
            p
        }
        None => box_prices(ctx, spec).await?,
    };
    let under = |unavailable| {
        plan::candidates(
            &prices,
            &spec.instance_types,
            zones,
            spec.max_price,
            unavailable,
        )
    };
    let chosen = match under(&avoid.offerings) {
        Ok(c) => c,
        Err(_) if !avoid.offerings.is_empty() => {
            ctx.progress
                .note("Every allowed offering was interrupted lately; trying them anyway");
            under(&HashSet::new())?
        }
        Err(e) => return Err(e.into()),
    };
    let ranked = ranked(ctx, spec, chosen, known.is_none()).await?;
    let best = &ranked[0];
    ctx.progress.note(&format!(
        "Spot price is {} ({} in {}), at or under the ceiling of {} ({}), continuing",
        best.offer.price,
        best.offer.instance_type,
        best.offer.zone,
        spec.max_price,
        match spec.price_cap {
            PriceCap::Spotkeeper => "held by spotkeeper: a box above it is moved",
            PriceCap::Aws => "sent to AWS as MaxPrice: AWS interrupts above it",
        }
    ));
    if spec.strategy != Strategy::Cheapest {
        ctx.progress.note(&format!(
            "Chose {} in {} (strategy {}): {}",
            best.offer.instance_type,
            best.offer.zone,
            spec.strategy.as_str(),
            best.reason
        ));
    }
    Ok(ranked
        .into_iter()
        .map(|r| Target {
            instance_type: r.offer.instance_type,
            zone: Some(r.offer.zone),
            subnet: None,
        })
        .collect())
}

/// How far back the interruption record is weighed.
const HISTORY: i64 = 30 * 24 * 3600;

/// The offerings under the ceiling in the box's strategy's order, with this
/// owner's interruption record of each and AWS's placement scores
/// ([`crate::rank`]); the scores are asked (`ask`) unless cached, except on
/// the warning's fast path.
async fn ranked(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    chosen: Vec<spotkeeper_cloud::SpotPrice>,
    ask: bool,
) -> Result<Vec<Ranked>, BoxError> {
    let (history, scores) = if spec.strategy == Strategy::Cheapest {
        Default::default()
    } else {
        let now = crate::store::unix_now();
        let history =
            crate::cost::offering_history(ctx.store, ctx.owner, now - HISTORY, now).await?;
        let (scores, refused) = crate::scores::scores(ctx.cloud, &spec.instance_types, ask).await;
        if let Some(said) = refused {
            ctx.progress.note(&said);
        }
        (history, scores)
    };
    let offers = chosen
        .into_iter()
        .map(|p| {
            let (hours, interruptions) = history
                .get(&(p.instance_type.clone(), p.zone.clone()))
                .copied()
                .unwrap_or_default();
            Offer {
                score: scores.get(&p.zone).copied(),
                instance_type: p.instance_type,
                zone: p.zone,
                price: p.price,
                hours,
                interruptions,
            }
        })
        .collect();
    Ok(rank(offers, spec.strategy, &spec.instance_types))
}
