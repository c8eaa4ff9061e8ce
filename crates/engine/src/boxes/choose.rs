//! Which offering a box launches in: the spot offerings of its zones under
//! the ceiling (none interrupted in the last minutes, unless all were), in
//! the order of the box's `strategy` ([`crate::rank`]), with why.

use std::collections::{BTreeMap, HashSet};

use spotkeeper_cloud::SpotPrice;

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

/// What a box's strategy weighs of its offerings: this owner's interruption
/// record (the last [`crate::cost::HISTORY`]) and AWS's placement scores.
#[derive(Debug, Default)]
pub struct Weighed {
    history: BTreeMap<spotkeeper_cloud::Offering, (f64, usize)>,
    scores: BTreeMap<String, u8>,
    /// The scores were refused: said once per process ([`crate::scores`]).
    pub refused: Option<String>,
}

impl Weighed {
    /// The record and scores of `spec`'s offerings; the scores are asked
    /// (`ask`) unless kept, never on the warning's fast path.
    pub async fn of(
        store: &crate::store::Store,
        cloud: &dyn spotkeeper_cloud::Cloud,
        owner: &str,
        spec: &BoxSpec,
        ask: bool,
    ) -> Result<Self, crate::store::StoreError> {
        let now = crate::store::unix_now();
        let (history, (scores, refused)) = tokio::join!(
            crate::cost::offering_history(store, owner, now - crate::cost::HISTORY, now),
            crate::scores::scores(cloud, &spec.instance_types, ask),
        );
        let history = history?;
        Ok(Self {
            history,
            scores,
            refused,
        })
    }

    /// `p` as the ranking sees it.
    pub fn offer(&self, p: &SpotPrice) -> Offer {
        let (hours, interruptions) = self
            .history
            .get(&spotkeeper_cloud::Offering::spot(&p.instance_type, &p.zone))
            .copied()
            .unwrap_or_default();
        Offer {
            instance_type: p.instance_type.clone(),
            zone: p.zone.clone(),
            price: p.price,
            score: self.scores.get(&p.zone).copied(),
            hours,
            interruptions,
        }
    }
}

/// The offerings under the ceiling in the box's strategy's order
/// ([`crate::rank`]); `cheapest` weighs nothing but the price.
async fn ranked(
    ctx: &Ctx<'_>,
    spec: &BoxSpec,
    chosen: Vec<SpotPrice>,
    ask: bool,
) -> Result<Vec<Ranked>, BoxError> {
    let weighed = if spec.strategy == Strategy::Cheapest {
        Weighed::default()
    } else {
        Weighed::of(ctx.store, ctx.cloud, ctx.owner, spec, ask).await?
    };
    if let Some(said) = &weighed.refused {
        ctx.progress.note(said);
    }
    let offers = chosen.iter().map(|p| weighed.offer(p)).collect();
    Ok(rank(offers, spec.strategy, &spec.instance_types))
}
