//! Prices and zones: `DescribeSpotPriceHistory`, `DescribeAvailabilityZones`,
//! and the on-demand price from the AWS Price List (`pricing:GetProducts`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{Filter, InstanceType};

use async_trait::async_trait;

use super::{AwsCloud, sdk_error};
use crate::error::{CloudError, ErrorKind};
use crate::model::SpotPrice;
use crate::prelude::*;

/// The hourly USD on-demand price in one Price List product document.
pub(crate) fn hourly_on_demand(doc: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(doc).ok()?;
    v.get("terms")?
        .get("OnDemand")?
        .as_object()?
        .values()
        .filter_map(|term| term.get("priceDimensions")?.as_object())
        .flat_map(|dims| dims.values())
        .filter(|d| d.get("unit").and_then(|u| u.as_str()) == Some("Hrs"))
        .filter_map(|d| {
            d.get("pricePerUnit")?
                .get("USD")?
                .as_str()?
                .parse::<f64>()
                .ok()
        })
        .find(|p| *p > 0.0)
}

#[async_trait]
impl Pricing for AwsCloud {
    async fn placement_scores(
        &self,
        instance_types: &[String],
    ) -> Result<BTreeMap<String, u8>, CloudError> {
        const OP: &str = "GetSpotPlacementScores";
        let out = self
            .ec2
            .get_spot_placement_scores()
            .set_instance_types(Some(instance_types.to_vec()))
            .target_capacity(1)
            .single_availability_zone(true)
            .region_names(self.region.clone())
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        // Scores name zones by id (use1-az4): the same id is a different
        // name in another account, so the names come from this account.
        let zones = self
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(|e| sdk_error("DescribeAvailabilityZones", e))?;
        let names: BTreeMap<&str, &str> = zones
            .availability_zones()
            .iter()
            .filter_map(|z| Some((z.zone_id()?, z.zone_name()?)))
            .collect();
        Ok(out
            .spot_placement_scores()
            .iter()
            .filter_map(|s| {
                let name = names.get(s.availability_zone_id()?)?;
                let score = u8::try_from(s.score()?).ok()?;
                Some(((*name).to_owned(), score))
            })
            .collect())
    }

    async fn zones(&self) -> Result<Vec<String>, CloudError> {
        let out = self
            .ec2
            .describe_availability_zones()
            .send()
            .await
            .map_err(|e| sdk_error("DescribeAvailabilityZones", e))?;
        let mut zones: Vec<String> = out
            .availability_zones()
            .iter()
            .filter(|z| z.state().is_none_or(|s| s.as_str() == "available"))
            .filter_map(|z| z.zone_name().map(str::to_owned))
            .collect();
        zones.sort();
        Ok(zones)
    }

    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError> {
        const OP: &str = "DescribeSpotPriceHistory";
        // StartTime = now asks for the price in force now: AWS returns, per
        // (type, zone), the latest change at or before that moment.
        let now = DateTime::from(SystemTime::now());
        let mut newest: BTreeMap<(String, String), (f64, Option<DateTime>)> = BTreeMap::new();
        let mut req = self
            .ec2
            .describe_spot_price_history()
            .start_time(now)
            .product_descriptions("Linux/UNIX")
            .set_instance_types(Some(
                instance_types
                    .iter()
                    .map(|t| InstanceType::from(t.as_str()))
                    .collect(),
            ));
        if !zones.is_empty() {
            req = req.filters(
                Filter::builder()
                    .name("availability-zone")
                    .set_values(Some(zones.to_vec()))
                    .build(),
            );
        }
        let mut pages = req.into_paginator().send();
        while let Some(out) = pages.next().await {
            let out = out.map_err(|e| sdk_error(OP, e))?;
            for entry in out.spot_price_history() {
                let (Some(itype), Some(zone), Some(price)) = (
                    entry.instance_type(),
                    entry.availability_zone(),
                    entry.spot_price(),
                ) else {
                    continue;
                };
                let price: f64 = price.parse().map_err(|_| {
                    CloudError::other(
                        OP,
                        ErrorKind::Other,
                        format!("unreadable spot price {price:?}"),
                    )
                })?;
                let key = (itype.as_str().to_owned(), zone.to_owned());
                let at = entry.timestamp().copied();
                let newer = match newest.get(&key) {
                    Some((_, seen)) => at.map(|a| a.secs()) > seen.map(|s| s.secs()),
                    None => true,
                };
                if newer {
                    newest.insert(key, (price, at));
                }
            }
        }
        Ok(newest
            .into_iter()
            .map(|((instance_type, zone), (price, _))| SpotPrice {
                instance_type,
                zone,
                price,
            })
            .collect())
    }

    /// The on-demand price (USD per hour, Linux, shared tenancy) of
    /// `instance_type` in this handle's region, from the AWS Price List;
    /// `None` when the list has no such product.
    async fn on_demand_price(&self, instance_type: &str) -> Result<Option<f64>, CloudError> {
        const OP: &str = "GetProducts";
        use aws_sdk_pricing::types::{Filter as PriceFilter, FilterType};
        let mut req = self
            .pricing()
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .max_results(10);
        for (field, value) in [
            ("instanceType", instance_type),
            ("regionCode", self.region.as_str()),
            ("operatingSystem", "Linux"),
            ("tenancy", "Shared"),
            ("preInstalledSw", "NA"),
            ("capacitystatus", "Used"),
        ] {
            req = req.filters(
                PriceFilter::builder()
                    .r#type(FilterType::TermMatch)
                    .field(field)
                    .value(value)
                    .build()
                    .map_err(|e| CloudError::other(OP, ErrorKind::InvalidRequest, e.to_string()))?,
            );
        }
        let out = req.send().await.map_err(|e| sdk_error(OP, e))?;
        Ok(out
            .price_list()
            .iter()
            .find_map(|doc| hourly_on_demand(doc)))
    }

    fn region(&self) -> &str {
        &self.region
    }
}
