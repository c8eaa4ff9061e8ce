//! Spot prices and zones: `DescribeSpotPriceHistory`, `DescribeAvailabilityZones`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{Filter, InstanceType};

use super::{AwsCloud, sdk_error};
use crate::error::{CloudError, ErrorKind};
use crate::model::SpotPrice;

impl AwsCloud {
    pub(crate) async fn zones_impl(&self) -> Result<Vec<String>, CloudError> {
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

    pub(crate) async fn subnet_zone_impl(&self, subnet_id: &str) -> Result<String, CloudError> {
        const OP: &str = "DescribeSubnets";
        let out = self
            .ec2
            .describe_subnets()
            .subnet_ids(subnet_id)
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        out.subnets()
            .first()
            .and_then(|s| s.availability_zone())
            .map(str::to_owned)
            .ok_or_else(|| {
                CloudError::other(
                    OP,
                    ErrorKind::NotFound,
                    format!("subnet {subnet_id} not found"),
                )
            })
    }

    pub(crate) async fn spot_prices_impl(
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
}
