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
//!
//! The pycloudlib-style API lives on [`AwsCloud`] and its handles:
//!
//! | pycloudlib | spotkeeper-cloud |
//! |---|---|
//! | `EC2(...)` | [`AwsCloud::connect`] (or [`AwsCloud::from_sdk_config`]) |
//! | `released_image('noble')`, `daily_image('noble')` | [`AwsCloud::resolve_image`] of [`ImageRef::parse`]`("ubuntu:noble")` / `("ubuntu:noble:daily")`; [`AwsCloud::latest_ubuntu`], [`AwsCloud::latest_ubuntu_daily`], [`AwsCloud::latest_al2023`] |
//! | `launch(ami, wait=True)` | [`AwsCloud::launch_ready`]: running, an SSH login, cloud-init done |
//! | `launch(ami, wait=False)` | [`AwsCloud::launch_instance`] → [`InstanceHandle`]; [`AwsCloud::launch_with`] for raw RunInstances fields |
//! | `launch(..., vpc=vpc)` | [`AwsCloud::launch_in_vpc`] |
//! | `get_instance(id)` | [`AwsCloud::get_instance`] |
//! | `inst.wait()` | [`InstanceHandle::wait`]: running, and with SSH settings ([`InstanceHandle::with_ssh`]) booted and cloud-init done; [`InstanceHandle::wait_running`] |
//! | `inst.wait_for_delete()`, `delete(wait)` | [`InstanceHandle::wait_for_delete`], [`InstanceHandle::delete`] |
//! | `inst.execute(cmd)` | [`InstanceHandle::execute`], [`InstanceHandle::wait_for_ssh`], [`InstanceHandle::wait_for_cloud_init`] |
//! | `inst.run_script(script)` | [`InstanceHandle::run_script`] |
//! | `inst.push_file()`, `pull_file()` | [`InstanceHandle::push_file`], [`InstanceHandle::pull_file`] (the system `scp`) |
//! | `inst.console_log()` | [`InstanceHandle::console_log`] |
//! | `inst.restart()`, `shutdown()`, `start()` | [`InstanceHandle::restart`], [`InstanceHandle::shutdown`], [`InstanceHandle::start`] |
//! | `inst.clean()`, `update()` | [`InstanceHandle::clean`], [`InstanceHandle::update`] |
//! | `snapshot(id)`, `image_delete(ami)` | [`AwsCloud::snapshot`], [`AwsCloud::delete_image`] |
//! | `get_or_create_vpc(name)`, `vpc.delete()` | [`AwsCloud::get_or_create_vpc`], [`Vpc::delete`] |
//! | `inst.add_volume()`, `add_network_interface()` | [`InstanceHandle::add_volume`], [`InstanceHandle::add_network_interface`] |
//! | key upload | [`AwsCloud::import_key_pair`] |
//!
//! ```no_run
//! use std::time::Duration;
//! use spotkeeper_cloud::{Arch, AwsCloud, ClientConfig, LaunchSpec, SshSettings};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let cloud = AwsCloud::connect(&ClientConfig { region: Some("us-east-1".into()), ..Default::default() }).await?;
//! let image = cloud.latest_ubuntu("24.04", Arch::Amd64).await?;
//! let mut spec = LaunchSpec::new(image, "t3.micro"); // spot by default
//! spec.key_name = Some("my-key".into());
//! let mut inst = cloud.launch_instance(&spec, true).await?;
//! let inst_ssh = inst.clone().with_ssh(SshSettings { user: "ubuntu".into(), ..Default::default() });
//! inst_ssh.wait_for_cloud_init(Duration::from_secs(600)).await?;
//! let out = inst_ssh.execute("uname -a", Duration::from_secs(30)).await?;
//! println!("{}", out.stdout);
//! inst.add_volume(8, "gp3").await?;
//! let image = cloud.snapshot(inst.id(), "my-image", &[]).await?;
//! inst.delete(true).await?;
//! cloud.delete_image(&image.id).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod aws;
mod cloud;
mod error;
#[cfg(feature = "test-util")]
pub mod fake;
mod handle;
pub mod model;
mod queue;
pub mod ssh;

use async_trait::async_trait;

pub use aws::{
    AwsCloud, CANONICAL_OWNER, CONNECT_TIMEOUT, ClientConfig, DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_OPERATION_TIMEOUT, EVENT_RULES, PRICING_REGION, Plumbing,
    QUEUE_RETENTION_SECONDS, QueueMessage, RECEIVE_VISIBILITY_SECONDS, VPC_TAG, VpcInfo,
    al2023_parameter, data_device_names, next_free_device, rule_name, split_cidr, ubuntu_parameter,
};
pub use cloud::Cloud;
pub use error::{CloudError, ErrorKind, classify};
pub use handle::{DELETE_WITH, InstanceHandle, LibraryError, Vpc};
pub use model::{
    Arch, DnsAction, DnsChange, DnsRecord, Image, ImageId, ImageRef, Instance, InstanceId,
    InstanceState, KeyPair, LaunchSpec, Market, NetworkInterface, Offering, RecordType, RootVolume,
    Snapshot, SnapshotId, SpotPrice, SpotRequest, SpotRequestId, SpotRequestState, TagFilter,
    Volume, VolumeId, fqdn,
};
pub use queue::{EventQueue, SqsQueue};
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
    fn region(&self) -> &str {
        AwsCloud::region(self)
    }
    async fn security_group_ids(
        &self,
        groups: &[String],
        subnet: Option<&str>,
    ) -> Result<Vec<String>, CloudError> {
        AwsCloud::security_group_ids(self, groups, subnet).await
    }
    async fn on_demand_price(&self, instance_type: &str) -> Result<Option<f64>, CloudError> {
        AwsCloud::on_demand_price(self, instance_type).await
    }
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError> {
        self.launch_impl(spec).await
    }
    async fn launch_many(
        &self,
        spec: &LaunchSpec,
        count: u32,
    ) -> Result<Vec<Instance>, CloudError> {
        self.launch_many_impl(spec, count).await
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
    async fn untag(&self, resource_ids: &[String], keys: &[&str]) -> Result<(), CloudError> {
        AwsCloud::untag(self, resource_ids, keys).await
    }
    async fn volumes(&self, filter: &TagFilter) -> Result<Vec<Volume>, CloudError> {
        AwsCloud::volumes(self, filter).await
    }
    async fn volume(&self, id: &VolumeId) -> Result<Option<Volume>, CloudError> {
        AwsCloud::volume(self, id).await
    }
    async fn create_volume(
        &self,
        zone: &str,
        size_gb: Option<i32>,
        kind: &str,
        snapshot: Option<&SnapshotId>,
        tags: &[(String, String)],
    ) -> Result<Volume, CloudError> {
        AwsCloud::create_volume(self, zone, size_gb, kind, snapshot, tags).await
    }
    async fn attach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> Result<Volume, CloudError> {
        AwsCloud::attach_volume(self, volume, instance, device).await
    }
    async fn detach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
    ) -> Result<Volume, CloudError> {
        AwsCloud::detach_volume(self, volume, instance).await
    }
    async fn delete_volume(&self, volume: &VolumeId) -> Result<(), CloudError> {
        AwsCloud::delete_volume(self, volume).await
    }
    async fn snapshot_volume(
        &self,
        volume: &VolumeId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        AwsCloud::snapshot_volume(self, volume, tags).await
    }
    async fn snapshots(&self, filter: &TagFilter) -> Result<Vec<Snapshot>, CloudError> {
        AwsCloud::snapshots(self, filter).await
    }
    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), CloudError> {
        AwsCloud::delete_snapshot(self, id).await
    }
    async fn image_root_snapshot(&self, image: &ImageId) -> Result<Option<SnapshotId>, CloudError> {
        AwsCloud::image_root_snapshot(self, image).await
    }
    async fn images(&self, filter: &TagFilter) -> Result<Vec<Image>, CloudError> {
        AwsCloud::images(self, filter).await
    }
    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        tags: &[(String, String)],
    ) -> Result<Image, CloudError> {
        AwsCloud::snapshot(self, instance, name, tags).await
    }
    async fn delete_image(&self, id: &ImageId) -> Result<Vec<SnapshotId>, CloudError> {
        AwsCloud::delete_image(self, id).await
    }
    async fn dns_zone(&self, name: &str, private: bool) -> Result<Option<String>, CloudError> {
        AwsCloud::dns_zone(self, name, private).await
    }
    async fn dns_record(
        &self,
        zone_id: &str,
        name: &str,
        kind: RecordType,
    ) -> Result<Option<DnsRecord>, CloudError> {
        AwsCloud::dns_record(self, zone_id, name, kind).await
    }
    async fn change_dns(&self, zone_id: &str, changes: &[DnsChange]) -> Result<(), CloudError> {
        AwsCloud::change_dns(self, zone_id, changes).await
    }
    async fn associate_address(
        &self,
        allocation_id: &str,
        instance: &InstanceId,
        reassociate: bool,
    ) -> Result<(), CloudError> {
        AwsCloud::associate_address(self, allocation_id, instance, reassociate).await
    }
    async fn address_holder(&self, allocation_id: &str) -> Result<Option<InstanceId>, CloudError> {
        Ok(AwsCloud::address(self, allocation_id)
            .await?
            .and_then(|(_, holder)| holder))
    }
}
