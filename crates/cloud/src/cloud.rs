//! The `Cloud` seam: the domain verbs the engine uses, one trait per area
//! ([`Pricing`], [`Compute`], [`Storage`], [`Images`], [`Network`], [`Dns`])
//! and [`Cloud`], all of them at once. Engine code never sees an SDK type;
//! [`crate::AwsCloud`] implements each area directly over the AWS SDK (no
//! forwarding layer) and `FakeCloud` (feature `test-util`) in memory. Callers
//! holding a concrete type bring the verbs into scope with
//! `use spotkeeper_cloud::prelude::*`.

use async_trait::async_trait;

use crate::error::CloudError;
use crate::model::{
    DnsChange, DnsRecord, Image, ImageId, ImageRef, ImageVolumes, Instance, InstanceId, LaunchSpec,
    RecordType, Snapshot, SnapshotId, SpotPrice, SpotRequest, SpotRequestId, TagFilter, Volume,
    VolumeId,
};

/// Where and for how much: the region, its zones, spot and on-demand prices.
#[async_trait]
pub trait Pricing: Send + Sync {
    /// The region this handle works in.
    fn region(&self) -> &str;

    /// Availability zones of the region that are `available`, sorted by name.
    async fn zones(&self) -> Result<Vec<String>, CloudError>;

    /// The newest spot price of each (type, zone) pair among `instance_types`
    /// (and `zones`, when not empty), for Linux/UNIX. One entry per pair; pairs
    /// AWS does not offer are absent.
    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError>;

    /// The on-demand price (USD per hour, Linux) of `instance_type` in the
    /// region, from the AWS Price List; `None` when it has no such product.
    async fn on_demand_price(&self, instance_type: &str) -> Result<Option<f64>, CloudError>;

    /// AWS's spot placement score (1–10: how likely a request succeeds) per
    /// zone of the region, for one instance of any of `instance_types`
    /// (`GetSpotPlacementScores`, single-zone scores). AWS limits how many
    /// distinct configurations an account asks about a day: callers cache.
    async fn placement_scores(
        &self,
        instance_types: &[String],
    ) -> Result<std::collections::BTreeMap<String, u8>, CloudError>;
}

/// Instances and spot requests: launch, describe, terminate, cancel, tag.
#[async_trait]
pub trait Compute: Send + Sync {
    /// Launches exactly one instance as `spec` says, tagged at creation. Repeating
    /// a call with the same `client_token` and parameters returns the same instance
    /// (AWS idempotency) instead of launching another.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError>;

    /// Launches `count` identical instances in one call (worker pools), tagged
    /// at creation. All or nothing: when AWS cannot place every one it places
    /// none and says why (e.g. `InsufficientInstanceCapacity`), so the caller
    /// can move the batch to another offering. Same token and parameters →
    /// the same instances.
    async fn launch_many(&self, spec: &LaunchSpec, count: u32)
    -> Result<Vec<Instance>, CloudError>;

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

    /// Removes tag keys from resources.
    async fn untag(&self, resource_ids: &[String], keys: &[&str]) -> Result<(), CloudError>;
}

/// EBS volumes and their snapshots.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Every volume whose tags match `filter`.
    async fn volumes(&self, filter: &TagFilter) -> Result<Vec<Volume>, CloudError>;

    /// One volume; `None` when it does not exist.
    async fn volume(&self, id: &VolumeId) -> Result<Option<Volume>, CloudError>;

    /// Creates a volume (from `snapshot` when given), tagged at creation; returns once `available`.
    async fn create_volume(
        &self,
        zone: &str,
        size_gb: Option<i32>,
        kind: &str,
        snapshot: Option<&SnapshotId>,
        tags: &[(String, String)],
    ) -> Result<Volume, CloudError>;

    /// Attaches a volume at `device`; returns once in use.
    async fn attach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> Result<Volume, CloudError>;

    /// Detaches a volume from `instance`; returns once available.
    async fn detach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
    ) -> Result<Volume, CloudError>;

    /// Deletes a volume (gone already is fine).
    async fn delete_volume(&self, volume: &VolumeId) -> Result<(), CloudError>;

    /// Snapshots a volume, tagged at creation; returns once completed.
    async fn snapshot_volume(
        &self,
        volume: &VolumeId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError>;

    /// Snapshots whose tags match `filter`, newest first.
    async fn snapshots(&self, filter: &TagFilter) -> Result<Vec<Snapshot>, CloudError>;

    /// Copies snapshot `source` of region `source_region` into this
    /// handle's region, tagged at creation; returns the copy's id at once
    /// (a copy across regions completes later: see its `state`).
    async fn copy_snapshot(
        &self,
        source_region: &str,
        source: &SnapshotId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError>;

    /// Deletes a snapshot (gone already is fine).
    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), CloudError>;
}

/// AMIs: resolve, list, create from an instance, delete.
#[async_trait]
pub trait Images: Send + Sync {
    /// The AMI an [`ImageRef`] names now (aliases resolve to the newest image).
    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError>;

    /// The snapshot behind an image's root device.
    async fn image_root_snapshot(&self, image: &ImageId) -> Result<Option<SnapshotId>, CloudError>;

    /// Images this account owns whose tags match `filter`, newest first.
    async fn images(&self, filter: &TagFilter) -> Result<Vec<Image>, CloudError>;

    /// An AMI of a running instance (`NoReboot`), tagged, carrying the
    /// instance's `volumes`; returns once available.
    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        tags: &[(String, String)],
        volumes: ImageVolumes,
    ) -> Result<Image, CloudError>;

    /// Deregisters an image and deletes its snapshots.
    async fn delete_image(&self, id: &ImageId) -> Result<Vec<SnapshotId>, CloudError>;

    /// Copies image `source` of region `source_region` into this handle's
    /// region, the copy and its snapshots tagged at creation, idempotent by
    /// `client_token`; returns the copy's id at once (it becomes available
    /// later).
    async fn copy_image(
        &self,
        source_region: &str,
        source: &ImageId,
        name: &str,
        tags: &[(String, String)],
        client_token: &str,
    ) -> Result<ImageId, CloudError>;
}

/// Subnets, security groups and Elastic IPs.
#[async_trait]
pub trait Network: Send + Sync {
    /// The zone a subnet lives in (a subnet pins its instances' zone).
    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError>;

    /// The ids of security groups given by id or by name (looked up in the
    /// VPC of `subnet`, else the default VPC); a name matching no group or
    /// several is an error.
    async fn security_group_ids(
        &self,
        groups: &[String],
        subnet: Option<&str>,
    ) -> Result<Vec<String>, CloudError>;

    /// Associates an Elastic IP allocation with an instance. With
    /// `reassociate` false, AWS refuses when the address is on another
    /// instance (`Resource.AlreadyAssociated`).
    async fn associate_address(
        &self,
        allocation_id: &str,
        instance: &InstanceId,
        reassociate: bool,
    ) -> Result<(), CloudError>;

    /// The instance an Elastic IP allocation is associated with, if any.
    async fn address_holder(&self, allocation_id: &str) -> Result<Option<InstanceId>, CloudError>;
}

/// Route 53 zones and records.
#[async_trait]
pub trait Dns: Send + Sync {
    /// The id of the public (with `private`, the private) Route53 hosted
    /// zone named `name`, if it exists.
    async fn dns_zone(&self, name: &str, private: bool) -> Result<Option<String>, CloudError>;

    /// The record set `name` of type `kind` in a zone, if any.
    async fn dns_record(
        &self,
        zone_id: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<DnsRecord>, CloudError>;

    /// Applies a batch of record changes, all or none (Route53's
    /// `ChangeResourceRecordSets`): a `Create` of a set that exists or a
    /// `Delete` of one that differs fails the whole batch.
    async fn change_dns(&self, zone_id: &str, changes: &[DnsChange]) -> Result<(), CloudError>;
}

/// The AWS operations spotkeeper's engine is written against: every area
/// trait at once. [`crate::AwsCloud`] implements each area in its own module
/// (`aws/pricing.rs`, `aws/instances.rs`, …), `FakeCloud` in memory; the
/// engine holds a `&dyn Cloud` and calls any of them.
pub trait Cloud: Pricing + Compute + Storage + Images + Network + Dns + std::fmt::Debug {}

impl<T> Cloud for T where T: Pricing + Compute + Storage + Images + Network + Dns + std::fmt::Debug {}
