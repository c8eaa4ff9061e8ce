//! # spotkeeper-cloud
//!
//! Typed EC2 operations for keeping spot capacity alive, over the official AWS
//! SDK for Rust. This is the only spotkeeper crate that imports `aws-sdk-*`.
//!
//! - [`Cloud`]: the domain verbs (prices, launch, describe, terminate, cancel, tag).
//! - [`AwsCloud`]: the implementation over AWS (or an emulator via `AWS_ENDPOINT_URL`).
//! - `FakeCloud` (feature `test-util`): an in-memory implementation with a call
//!   log and error injection, for behaviour tests of the crates above.
//! - [`CloudError`] / [`ErrorKind`]: every AWS error code classified in one place.

mod aws;
mod cloud;
mod error;
#[cfg(feature = "test-util")]
pub mod fake;
mod handle;
pub mod model;
pub mod ssh;

use async_trait::async_trait;

pub use aws::{
    AwsCloud, CANONICAL_OWNER, ClientConfig, VPC_TAG, VpcInfo, al2023_parameter, data_device_names,
    next_free_device, split_cidr, ubuntu_parameter,
};
pub use cloud::Cloud;
pub use error::{CloudError, ErrorKind, classify};
pub use handle::{DELETE_WITH, InstanceHandle, Vpc};
pub use model::{
    Arch, Image, ImageId, ImageRef, Instance, InstanceId, InstanceState, KeyPair, LaunchSpec,
    Market, NetworkInterface, RootVolume, SnapshotId, SpotPrice, SpotRequest, SpotRequestId,
    SpotRequestState, TagFilter, Volume, VolumeId,
};
pub use ssh::{CloudInitStatus, ExecOutput, SshError, SshSettings};

#[async_trait]
impl Cloud for AwsCloud {
    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError> {
        AwsCloud::resolve_image(self, image).await
    }
    async fn zones(&self) -> Result<Vec<String>, CloudError> {
        self.zones_impl().await
    }
    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError> {
        self.subnet_zone_impl(subnet_id).await
    }
    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError> {
        self.spot_prices_impl(instance_types, zones).await
    }
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError> {
        self.launch_impl(spec).await
    }
    async fn instances(&self, filter: &TagFilter) -> Result<Vec<Instance>, CloudError> {
        self.instances_impl(filter).await
    }
    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>, CloudError> {
        self.instance_impl(id).await
    }
    async fn spot_requests(&self, filter: &TagFilter) -> Result<Vec<SpotRequest>, CloudError> {
        self.spot_requests_impl(filter).await
    }
    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        self.terminate_impl(ids).await
    }
    async fn cancel_spot_requests(&self, ids: &[SpotRequestId]) -> Result<(), CloudError> {
        self.cancel_spot_requests_impl(ids).await
    }
    async fn tag(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        self.tag_impl(resource_ids, tags).await
    }
}
