//! # spotkeeper-cloud
//!
//! Typed EC2 operations for keeping spot capacity alive, over the official AWS
//! SDK for Rust. This is the only spotkeeper crate that imports `aws-sdk-*`.
//!
//! - [`Cloud`]: the domain verbs, one trait per area ([`Pricing`], [`Compute`],
//!   [`Storage`], [`Images`], [`Network`], [`Dns`]); [`JobQueue`] counts a
//!   pool's pending jobs, [`EventQueue`] brings the daemon its EC2 events.
//! - [`AwsCloud`]: the implementation over AWS (or an emulator via `AWS_ENDPOINT_URL`).
//! - `FakeCloud` (feature `test-util`): an in-memory implementation with a call
//!   log and error injection, for behaviour tests of the crates above.
//! - [`CloudError`] / [`ErrorKind`]: every AWS error code classified in one place.
//!
//! The pycloudlib-style API lives on [`AwsCloud`], its area traits (bring
//! them into scope with `use spotkeeper_cloud::prelude::*`) and its handles:
//!
//! | pycloudlib | spotkeeper-cloud |
//! |---|---|
//! | `EC2(...)` | [`AwsCloud::connect`] (or [`AwsCloud::from_sdk_config`]) |
//! | `released_image('noble')`, `daily_image('noble')` | [`Images::resolve_image`] of [`ImageRef::parse`]`("ubuntu:noble")` / `("ubuntu:noble:daily")`; [`AwsCloud::latest_ubuntu`], [`AwsCloud::latest_ubuntu_daily`], [`AwsCloud::latest_al2023`] |
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
//! | `snapshot(id)`, `image_delete(ami)` | [`Images::create_image`], [`Images::delete_image`] |
//! | `get_or_create_vpc(name)`, `vpc.delete()` | [`AwsCloud::get_or_create_vpc`], [`Vpc::delete`] |
//! | `inst.add_volume()`, `add_network_interface()` | [`InstanceHandle::add_volume`], [`InstanceHandle::add_network_interface`] |
//! | key upload | [`AwsCloud::import_key_pair`] |
//!
//! ```no_run
//! use std::time::Duration;
//! use spotkeeper_cloud::prelude::*;
//! use spotkeeper_cloud::{Arch, AwsCloud, ClientConfig, ImageVolumes, LaunchSpec, SshSettings};
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
//! let image = cloud.create_image(inst.id(), "my-image", &[], ImageVolumes::All).await?;
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
mod wait;

pub use aws::{
    AwsCloud, CANONICAL_OWNER, CONNECT_TIMEOUT, ClientConfig, DEFAULT_ATTEMPT_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_OPERATION_TIMEOUT, EVENT_RULES, FIS_SPOT_ACTION, FisDrill,
    FisRequest, PRICING_REGION, Plumbing, QUEUE_RETENTION_SECONDS, QueueMessage,
    RECEIVE_VISIBILITY_SECONDS, VPC_TAG, VpcInfo, al2023_parameter, data_device_names,
    next_free_device, rule_name, split_cidr, ubuntu_parameter,
};
pub use cloud::{Cloud, Compute, Dns, Images, Network, Pricing, Storage};
pub use error::{CloudError, ErrorKind, classify};
pub use handle::{DELETE_WITH, InstanceHandle, LibraryError, Vpc};
pub use model::{
    Arch, DnsAction, DnsChange, DnsRecord, Image, ImageId, ImageRef, ImageVolumes, Instance,
    InstanceId, InstanceState, KeyPair, LaunchSpec, Market, MetadataTokens, NetworkInterface,
    Offering, RecordType, RootVolume, Snapshot, SnapshotId, SpotPrice, SpotRequest, SpotRequestId,
    SpotRequestState, TagFilter, Volume, VolumeId, fqdn,
};
pub use queue::{EventQueue, JobQueue, SqsQueue, queue_account};
pub use ssh::{CloudInitStatus, ExecOutput, SshError, SshSettings};

/// The verbs of every area trait, for callers holding a concrete
/// [`AwsCloud`] or `FakeCloud` rather than a `&dyn Cloud`.
pub mod prelude {
    pub use crate::cloud::{Cloud, Compute, Dns, Images, Network, Pricing, Storage};
    pub use crate::queue::{EventQueue, JobQueue};
}
