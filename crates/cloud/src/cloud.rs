//! The `Cloud` trait: the domain verbs the engine uses. Engine code never sees an
//! SDK type; [`crate::AwsCloud`] implements this over the AWS SDK and
//! `FakeCloud` (feature `test-util`) in memory.

use async_trait::async_trait;

use crate::error::CloudError;
use crate::model::{
    ImageId, ImageRef, Instance, InstanceId, LaunchSpec, SpotPrice, SpotRequest, SpotRequestId,
    TagFilter,
};

/// The EC2 operations spotkeeper's engine is written against.
#[async_trait]
pub trait Cloud: Send + Sync + std::fmt::Debug {
    /// The AMI an [`ImageRef`] names now (aliases resolve to the newest image).
    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError>;

    /// Availability zones of the region that are `available`, sorted by name.
    async fn zones(&self) -> Result<Vec<String>, CloudError>;

    /// The zone a subnet lives in (a subnet pins its instances' zone).
    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError>;

    /// The newest spot price of each (type, zone) pair among `instance_types`
    /// (and `zones`, when not empty), for Linux/UNIX. One entry per pair; pairs
    /// AWS does not offer are absent.
    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError>;

    /// Launches exactly one instance as `spec` says, tagged at creation. Repeating
    /// a call with the same `client_token` and parameters returns the same instance
    /// (AWS idempotency) instead of launching another.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError>;

    /// Every instance (any state) whose tags match `filter`, all pages.
    async fn instances(&self, filter: &TagFilter) -> Result<Vec<Instance>, CloudError>;

    /// One instance by id; `Ok(None)` when AWS does not know it (or no longer).
    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>, CloudError>;

    /// Every spot request (any state) whose tags match `filter`, all pages.
    async fn spot_requests(&self, filter: &TagFilter) -> Result<Vec<SpotRequest>, CloudError>;

    /// Starts terminating the instances. Terminating a terminated instance is not an error.
    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), CloudError>;

    /// Cancels the spot requests (their instances, if any, keep running).
    async fn cancel_spot_requests(&self, ids: &[SpotRequestId]) -> Result<(), CloudError>;

    /// Adds or overwrites `tags` on the resources (instances, requests, volumes …).
    async fn tag(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), CloudError>;
}
