//! `FakeCloud`'s prices and zones: spot prices set per (type, zone), the
//! on-demand prices and placement scores the test gave it.

use async_trait::async_trait;

use super::FakeCloud;
use crate::cloud::Pricing;
use std::collections::BTreeMap;

use crate::error::CloudError;
use crate::model::*;

#[async_trait]
impl Pricing for FakeCloud {
    fn region(&self) -> &str {
        "us-east-1"
    }

    async fn zones(&self) -> Result<Vec<String>, CloudError> {
        self.pause("DescribeAvailabilityZones").await;
        Ok(self.enter("DescribeAvailabilityZones")?.zones.clone())
    }

    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError> {
        self.pause("DescribeSpotPriceHistory").await;
        let s = self.enter("DescribeSpotPriceHistory")?;
        Ok(s.prices
            .iter()
            .filter(|((t, z), _)| {
                instance_types.contains(t) && (zones.is_empty() || zones.contains(z))
            })
            .map(|((t, z), p)| SpotPrice {
                instance_type: t.clone(),
                zone: z.clone(),
                price: *p,
            })
            .collect())
    }

    async fn on_demand_price(&self, instance_type: &str) -> Result<Option<f64>, CloudError> {
        Ok(self
            .enter("GetProducts")?
            .on_demand
            .get(instance_type)
            .copied())
    }

    async fn placement_scores(
        &self,
        _instance_types: &[String],
    ) -> Result<BTreeMap<String, u8>, CloudError> {
        Ok(self.enter("GetSpotPlacementScores")?.scores.clone())
    }
}
