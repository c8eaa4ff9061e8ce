//! Pure launch planning: which (type, zone) offerings a box may use at the
//! current prices, in the order to try them, and the launch's client token.

use std::collections::HashSet;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use spotkeeper_cloud::{Market, Offering, SpotPrice};

/// No offering is at or under the ceiling; carries the prices seen, cheapest first.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", describe_no_offering(.ceiling, .prices))]
pub struct NoOffering {
    /// The box's `max_price`.
    pub ceiling: f64,
    /// Every price seen for the allowed pairs, cheapest first.
    pub prices: Vec<SpotPrice>,
}

fn describe_no_offering(ceiling: &f64, prices: &[SpotPrice]) -> String {
    if prices.is_empty() {
        return "AWS reports no spot price for any allowed instance type in the allowed zones"
            .into();
    }
    let mut s =
        format!("no spot offering at or under the ceiling of {ceiling} USD/h; current prices:");
    for p in prices {
        let _ = write!(s, "\n  {:<14} {:<14} {}", p.instance_type, p.zone, p.price);
    }
    s
}

/// Sorts prices cheapest first; ties go to the type listed earlier in
/// `preference` (unlisted types last), then to the zone name.
pub fn sort_prices(prices: &mut [SpotPrice], preference: &[String]) {
    let rank = |t: &str| preference.iter().position(|p| p == t).unwrap_or(usize::MAX);
    prices.sort_by(|a, b| {
        a.price
            .total_cmp(&b.price)
            .then_with(|| rank(&a.instance_type).cmp(&rank(&b.instance_type)))
            .then_with(|| a.zone.cmp(&b.zone))
    });
}

/// The offerings a box may launch, best first: only the allowed types and
/// zones, at or under `ceiling`, and not in `unavailable` (spot offerings
/// that just failed for capacity or were interrupted). Errors with every
/// allowed price when none qualifies.
pub fn candidates(
    prices: &[SpotPrice],
    types: &[String],
    zones: &[String],
    ceiling: f64,
    unavailable: &HashSet<Offering>,
) -> Result<Vec<SpotPrice>, NoOffering> {
    let mut allowed: Vec<SpotPrice> = prices
        .iter()
        .filter(|p| types.contains(&p.instance_type) && zones.contains(&p.zone))
        .cloned()
        .collect();
    sort_prices(&mut allowed, types);
    let chosen: Vec<SpotPrice> = allowed
        .iter()
        .filter(|p| p.price <= ceiling)
        .filter(|p| {
            unavailable.is_empty()
                || !unavailable.contains(&Offering::spot(&p.instance_type, &p.zone))
        })
        .cloned()
        .collect();
    if chosen.is_empty() {
        return Err(NoOffering {
            ceiling,
            prices: allowed,
        });
    }
    Ok(chosen)
}

/// The ClientToken of a launch: deterministic in what identifies the launch, so
/// a retry after a crash repeats the same token and AWS returns the instance it
/// already made. 35 ASCII characters (AWS allows 64).
pub fn client_token(
    owner: &str,
    box_name: &str,
    generation: i64,
    market: Market,
    instance_type: &str,
    zone: Option<&str>,
) -> String {
    let mut h = Sha256::new();
    for part in [
        owner,
        box_name,
        &generation.to_string(),
        market.as_str(),
        instance_type,
        zone.unwrap_or(""),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let mut token = String::from("sk-");
    for b in &digest[..16] {
        let _ = write!(token, "{b:02x}");
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str, z: &str, price: f64) -> SpotPrice {
        SpotPrice {
            instance_type: t.into(),
            zone: z.into(),
            price,
        }
    }
    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn cheapest_allowed_pair_comes_first() {
        let prices = [
            p("t3.micro", "a", 0.010),
            p("t3a.micro", "b", 0.004),
            p("t3.micro", "b", 0.006),
            p("m5.large", "a", 0.001),
        ];
        let c = candidates(
            &prices,
            &s(&["t3.micro", "t3a.micro"]),
            &s(&["a", "b"]),
            0.02,
            &HashSet::new(),
        )
        .expect("some");
        assert_eq!(c[0], p("t3a.micro", "b", 0.004));
        assert_eq!(c.len(), 3, "m5.large is not allowed");
    }

    #[test]
    fn equal_prices_follow_type_preference_then_zone() {
        let prices = [
            p("t3a.micro", "a", 0.005),
            p("t3.micro", "b", 0.005),
            p("t3.micro", "a", 0.005),
        ];
        let c = candidates(
            &prices,
            &s(&["t3.micro", "t3a.micro"]),
            &s(&["a", "b"]),
            1.0,
            &HashSet::new(),
        )
        .expect("some");
        assert_eq!(
            c,
            vec![
                p("t3.micro", "a", 0.005),
                p("t3.micro", "b", 0.005),
                p("t3a.micro", "a", 0.005)
            ]
        );
    }

    #[test]
    fn ceiling_excludes_dearer_pairs_and_none_under_lists_every_price() {
        let prices = [p("t3.micro", "a", 0.03), p("t3.micro", "b", 0.025)];
        let e = candidates(
            &prices,
            &s(&["t3.micro"]),
            &s(&["a", "b"]),
            0.02,
            &HashSet::new(),
        )
        .expect_err("none");
        assert_eq!(
            e.prices,
            vec![p("t3.micro", "b", 0.025), p("t3.micro", "a", 0.03)]
        );
        assert!(e.to_string().contains("0.025"), "{e}");
        let ok = candidates(
            &prices,
            &s(&["t3.micro"]),
            &s(&["a", "b"]),
            0.025,
            &HashSet::new(),
        )
        .expect("at the ceiling is allowed");
        assert_eq!(ok, vec![p("t3.micro", "b", 0.025)]);
    }

    #[test]
    fn disallowed_zones_and_unavailable_pairs_are_skipped() {
        let prices = [
            p("t3.micro", "a", 0.001),
            p("t3.micro", "b", 0.002),
            p("t3.micro", "c", 0.003),
        ];
        let unavailable = HashSet::from([Offering::spot("t3.micro", "b")]);
        let c = candidates(
            &prices,
            &s(&["t3.micro"]),
            &s(&["b", "c"]),
            1.0,
            &unavailable,
        )
        .expect("some");
        assert_eq!(c, vec![p("t3.micro", "c", 0.003)]);
    }

    #[test]
    fn tokens_are_stable_short_and_differ_by_generation_and_offering() {
        let a = client_token("o", "dev", 1, Market::Spot, "t3.micro", Some("a"));
        assert_eq!(
            a,
            client_token("o", "dev", 1, Market::Spot, "t3.micro", Some("a"))
        );
        assert!(a.len() <= 64 && a.is_ascii());
        assert_ne!(
            a,
            client_token("o", "dev", 2, Market::Spot, "t3.micro", Some("a"))
        );
        assert_ne!(
            a,
            client_token("o", "dev", 1, Market::Spot, "t3.micro", Some("b"))
        );
        assert_ne!(
            a,
            client_token("o", "dev", 1, Market::OnDemand, "t3.micro", Some("a"))
        );
        assert_ne!(
            a,
            client_token("o", "prod", 1, Market::Spot, "t3.micro", Some("a"))
        );
    }
}
