//! Choosing better than the cheapest: the offerings a box may launch, in the
//! order a `strategy` prefers them, each with the reason for its place. Pure:
//! offerings in (price, and what is known of their risk), ordered offerings
//! out.
//!
//! Risk comes from two places. AWS's spot placement score (1–10, "how likely
//! a request succeeds"; `None` when not asked or refused), and spotkeeper's
//! own record: the interruptions it handled per offering over the spot hours
//! it ran there ([`crate::cost::offering_history`]). No other tool uses its own
//! interruption history to choose.
//!
//! - `cheapest`: price, then the type's place in `instance_types`, then zone.
//! - `price-capacity` (the default): the cheapest of the offerings with good
//!   capacity; the risky ones (a low score, or interrupted repeatedly and
//!   more than once a day of running) after all the others, by price.
//! - `capacity`: the least likely to be interrupted: best score, then lowest
//!   interruption rate, then price.

use serde::{Deserialize, Serialize};

/// `strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The cheapest allowed offering.
    Cheapest,
    /// The cheapest among the offerings with good capacity.
    #[default]
    PriceCapacity,
    /// The least likely to be interrupted.
    Capacity,
}

impl Strategy {
    /// Its config keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Cheapest => "cheapest",
            Strategy::PriceCapacity => "price-capacity",
            Strategy::Capacity => "capacity",
        }
    }
}

/// A placement score below this is poor capacity (AWS scores 1 to 10).
pub const GOOD_SCORE: u8 = 5;

/// More interruptions per spot-hour than this (once a day of running) is
/// risky, once seen at least [`RISKY_AFTER`] times.
pub const RISKY_RATE: f64 = 1.0 / 24.0;

/// Interruptions an offering needs before its rate counts: one may be bad luck.
pub const RISKY_AFTER: usize = 2;

/// Quiet hours assumed before the record (a prior): two interruptions in a
/// short run are not yet a pattern; the same two a day apart, again and
/// again, are.
pub const PRIOR_HOURS: f64 = 24.0;

/// Whether `interruptions` in `hours` of spot running is a pattern: at least
/// [`RISKY_AFTER`], and more than [`RISKY_RATE`] with [`PRIOR_HOURS`] of
/// quiet assumed before the record.
pub fn risky_record(hours: f64, interruptions: usize) -> bool {
    interruptions >= RISKY_AFTER && interruptions as f64 / (hours + PRIOR_HOURS) > RISKY_RATE
}

/// One offering with what is known of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Offer {
    /// Instance type.
    pub instance_type: String,
    /// Zone.
    pub zone: String,
    /// Spot price, USD/hour.
    pub price: f64,
    /// AWS's placement score (1–10), if known.
    pub score: Option<u8>,
    /// Spot hours spotkeeper ran there (the window of the history).
    pub hours: f64,
    /// Interruptions it handled there.
    pub interruptions: usize,
}

impl Offer {
    /// Interruptions per spot-hour, when there were any (at least an hour
    /// counted: a few minutes' run would make one look like a storm).
    pub fn rate(&self) -> Option<f64> {
        (self.interruptions > 0).then(|| self.interruptions as f64 / self.hours.max(1.0))
    }

    /// Why it is risky, if it is.
    pub fn risk(&self) -> Option<String> {
        if let Some(s) = self.score.filter(|s| *s < GOOD_SCORE) {
            return Some(format!("placement score {s} of 10"));
        }
        match self.rate() {
            Some(_) if risky_record(self.hours, self.interruptions) => Some(format!(
                "interrupted {} times in {:.0} spot-hours",
                self.interruptions, self.hours
            )),
            _ => None,
        }
    }
}

/// An offering in its place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// 1 = first choice.
    pub rank: usize,
    /// The offering.
    #[serde(flatten)]
    pub offer: Offer,
    /// Why it is where it is.
    pub reason: String,
}

/// `offers` in `strategy`'s order, each with its reason; ties go to the
/// type listed earlier in `preference`, then to the zone's name.
pub fn rank(mut offers: Vec<Offer>, strategy: Strategy, preference: &[String]) -> Vec<Ranked> {
    let pref = |t: &str| preference.iter().position(|p| p == t).unwrap_or(usize::MAX);
    let cheaper = |a: &Offer, b: &Offer| {
        a.price
            .total_cmp(&b.price)
            .then_with(|| pref(&a.instance_type).cmp(&pref(&b.instance_type)))
            .then_with(|| a.zone.cmp(&b.zone))
    };
    match strategy {
        Strategy::Cheapest => offers.sort_by(cheaper),
        Strategy::PriceCapacity => offers.sort_by(|a, b| {
            a.risk()
                .is_some()
                .cmp(&b.risk().is_some())
                .then_with(|| cheaper(a, b))
        }),
        Strategy::Capacity => offers.sort_by(|a, b| {
            // An unknown score sits in the middle; no interruption seen is 0.
            let score = |o: &Offer| o.score.unwrap_or(GOOD_SCORE);
            score(b)
                .cmp(&score(a))
                .then_with(|| a.rate().unwrap_or(0.0).total_cmp(&b.rate().unwrap_or(0.0)))
                .then_with(|| cheaper(a, b))
        }),
    }
    let cheapest = offers.iter().map(|o| o.price).fold(f64::INFINITY, f64::min);
    offers
        .into_iter()
        .enumerate()
        .map(|(i, offer)| {
            let reason = reason(&offer, strategy, cheapest);
            Ranked {
                rank: i + 1,
                offer,
                reason,
            }
        })
        .collect()
}

fn reason(o: &Offer, strategy: Strategy, cheapest: f64) -> String {
    let price = if o.price <= cheapest {
        "the cheapest".to_owned()
    } else {
        format!(
            "{:.0} % over the cheapest",
            100.0 * (o.price / cheapest - 1.0)
        )
    };
    let history = match o.rate() {
        None if o.hours > 0.0 => format!("no interruption in {:.0} spot-hours", o.hours),
        None => "no history".to_owned(),
        Some(_) => format!(
            "interrupted {} times in {:.0} spot-hours",
            o.interruptions,
            o.hours.max(1.0)
        ),
    };
    match (strategy, o.risk()) {
        (Strategy::Cheapest, _) => price,
        (Strategy::PriceCapacity, Some(risk)) => format!("{price}, but risky: {risk}"),
        (Strategy::PriceCapacity, None) => format!("{price} with good capacity ({history})"),
        (Strategy::Capacity, _) => match o.score {
            Some(s) => format!("placement score {s}, {history}, {price}"),
            None => format!("{history}, {price}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(t: &str, z: &str, price: f64, hours: f64, interruptions: usize) -> Offer {
        Offer {
            instance_type: t.into(),
            zone: z.into(),
            price,
            score: None,
            hours,
            interruptions,
        }
    }

    fn order(r: &[Ranked]) -> Vec<(&str, &str)> {
        r.iter()
            .map(|r| (r.offer.instance_type.as_str(), r.offer.zone.as_str()))
            .collect()
    }

    fn prefs() -> Vec<String> {
        vec!["t3.micro".into(), "t3a.micro".into()]
    }

    #[test]
    fn each_strategy_orders_the_same_offerings_its_own_way() {
        let offers = vec![
            // Cheapest, but interrupted 6 times in 48 h of running.
            o("t3a.micro", "a", 0.003, 48.0, 6),
            o("t3.micro", "b", 0.004, 100.0, 0),
            o("t3.micro", "a", 0.005, 10.0, 1),
        ];
        let table = [
            (
                Strategy::Cheapest,
                [("t3a.micro", "a"), ("t3.micro", "b"), ("t3.micro", "a")],
            ),
            (
                Strategy::PriceCapacity,
                [("t3.micro", "b"), ("t3.micro", "a"), ("t3a.micro", "a")],
            ),
            (
                Strategy::Capacity,
                [("t3.micro", "b"), ("t3.micro", "a"), ("t3a.micro", "a")],
            ),
        ];
        for (strategy, want) in table {
            let r = rank(offers.clone(), strategy, &prefs());
            assert_eq!(order(&r), want, "{strategy:?}");
            assert_eq!(r.iter().map(|r| r.rank).collect::<Vec<_>>(), [1, 2, 3]);
        }
        let r = rank(offers, Strategy::PriceCapacity, &prefs());
        assert_eq!(
            r[0].reason,
            "33 % over the cheapest with good capacity (no interruption in 100 spot-hours)"
        );
        assert_eq!(
            r[2].reason,
            "the cheapest, but risky: interrupted 6 times in 48 spot-hours"
        );
    }

    #[test]
    fn ties_follow_the_type_preference_then_the_zone() {
        let offers = vec![
            o("t3a.micro", "a", 0.005, 0.0, 0),
            o("t3.micro", "b", 0.005, 0.0, 0),
            o("t3.micro", "a", 0.005, 0.0, 0),
        ];
        for strategy in [
            Strategy::Cheapest,
            Strategy::PriceCapacity,
            Strategy::Capacity,
        ] {
            assert_eq!(
                order(&rank(offers.clone(), strategy, &prefs())),
                [("t3.micro", "a"), ("t3.micro", "b"), ("t3a.micro", "a")],
                "{strategy:?}"
            );
        }
    }

    #[test]
    fn missing_or_refused_scores_leave_history_and_price_to_decide() {
        // No scores at all (refused, or never asked): price-capacity is the
        // cheapest unless the history says otherwise.
        let offers = vec![
            o("t3.micro", "b", 0.004, 0.0, 0),
            o("t3.micro", "a", 0.003, 0.0, 0),
        ];
        let r = rank(offers, Strategy::PriceCapacity, &prefs());
        assert_eq!(order(&r), [("t3.micro", "a"), ("t3.micro", "b")]);
        assert_eq!(r[0].reason, "the cheapest with good capacity (no history)");
        // A poor score is risky; an unknown one is not.
        let mut poor = o("t3.micro", "a", 0.003, 0.0, 0);
        poor.score = Some(2);
        let mut good = o("t3.micro", "b", 0.004, 0.0, 0);
        good.score = Some(9);
        let unknown = o("t3a.micro", "c", 0.0035, 0.0, 0);
        let r = rank(vec![poor, good, unknown], Strategy::PriceCapacity, &prefs());
        assert_eq!(
            order(&r),
            [("t3a.micro", "c"), ("t3.micro", "b"), ("t3.micro", "a")]
        );
        assert!(
            r[2].reason.contains("placement score 2 of 10"),
            "{}",
            r[2].reason
        );
        let r = rank(
            r.into_iter().map(|r| r.offer).collect(),
            Strategy::Capacity,
            &prefs(),
        );
        assert_eq!(order(&r)[0], ("t3.micro", "b"), "the best score first");
    }

    #[test]
    fn one_interruption_or_a_long_quiet_run_is_not_risk() {
        // Once: bad luck. Twice in 1,000 h: rarer than once a day. Twice in
        // a day's run: not yet a pattern; three times in 20 h: risky.
        assert_eq!(o("t", "a", 0.1, 2.0, 1).risk(), None);
        assert_eq!(o("t", "a", 0.1, 1000.0, 2).risk(), None);
        assert_eq!(o("t", "a", 0.1, 30.0, 2).risk(), None);
        assert!(o("t", "a", 0.1, 20.0, 3).risk().is_some());
        // Minutes of running count as an hour.
        assert_eq!(o("t", "a", 0.1, 0.01, 1).rate(), Some(1.0));
    }
}
