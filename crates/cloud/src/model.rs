//! Domain types of the cloud layer: identifiers, markets, instances, prices and
//! launch specifications. Nothing here mentions an SDK type, so the engine can
//! reason about EC2 without depending on `aws-sdk-*`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps an identifier as AWS returned it.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            /// The identifier as AWS spells it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_newtype!(
    /// An EC2 instance id (`i-…`).
    InstanceId
);
id_newtype!(
    /// An AMI id (`ami-…`).
    ImageId
);
id_newtype!(
    /// A spot instance request id (`sir-…`).
    SpotRequestId
);

/// Tag keys spotkeeper puts on everything it creates. They are set at creation
/// (TagSpecifications), so a crash between launch and tagging cannot leave an
/// unowned resource behind.
pub mod tags {
    /// Which spotkeeper installation owns the resource (config `owner`).
    pub const OWNER: &str = "spotkeeper:owner";
    /// The box the resource belongs to.
    pub const BOX: &str = "spotkeeper:box";
    /// The worker pool an instance or spot request belongs to.
    pub const POOL: &str = "spotkeeper:pool";
    /// The launch intent (client token) that created the resource.
    pub const INTENT: &str = "spotkeeper:intent";
    /// Set on instances and spot requests that `stop` is taking down, before it
    /// terminates them, so no later `up` (or daemon) mistakes them for the box.
    pub const STOPPED: &str = "spotkeeper:stopped";
    /// The conventional EC2 console name.
    pub const NAME: &str = "Name";
}

/// Where capacity comes from: an instance type in a zone, in a market. AWS
/// reclaims and refuses capacity per offering, so the daemon marks and
/// avoids offerings, not instances.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Offering {
    /// Instance type, e.g. `t3.micro`.
    pub instance_type: String,
    /// Availability zone, e.g. `us-east-1a`.
    pub zone: String,
    /// Spot or on-demand.
    pub market: Market,
}

impl Offering {
    /// The offering of `instance_type` in `zone` on `market`.
    pub fn new(instance_type: impl Into<String>, zone: impl Into<String>, market: Market) -> Self {
        Self {
            instance_type: instance_type.into(),
            zone: zone.into(),
            market,
        }
    }

    /// The spot offering of `instance_type` in `zone`: what the daemon
    /// avoids after an interruption, and what price samples and the
    /// interruption record are kept per.
    pub fn spot(instance_type: impl Into<String>, zone: impl Into<String>) -> Self {
        Self::new(instance_type, zone, Market::Spot)
    }
}

/// How an instance is paid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    /// Spare capacity at the spot price; AWS may reclaim it with a two-minute warning.
    Spot,
    /// Regular on-demand capacity.
    OnDemand,
}

impl Market {
    /// `"spot"` or `"on-demand"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        }
    }
}

impl TryFrom<String> for Market {
    type Error = String;
    /// `"spot"` or `"on-demand"` (as stored in spotkeeper's state).
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "spot" => Ok(Market::Spot),
            "on-demand" => Ok(Market::OnDemand),
            other => Err(format!("{other:?} is not a market (spot or on-demand)")),
        }
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle state of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Starting up.
    Pending,
    /// Running.
    Running,
    /// Being terminated.
    ShuttingDown,
    /// Gone (stays visible in DescribeInstances for about an hour).
    Terminated,
    /// Being stopped.
    Stopping,
    /// Stopped (EBS-backed on-demand instances only).
    Stopped,
}

impl InstanceState {
    /// Parses the EC2 state name (`pending`, `running`, `shutting-down`, …).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "shutting-down" => Self::ShuttingDown,
            "terminated" => Self::Terminated,
            "stopping" => Self::Stopping,
            "stopped" => Self::Stopped,
            _ => return None,
        })
    }

    /// The EC2 state name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::ShuttingDown => "shutting-down",
            Self::Terminated => "terminated",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }

    /// Pending or running: the instance is (or is becoming) the live box.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Shutting down or terminated: it will never run again.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An EC2 instance as last described.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id.
    pub id: InstanceId,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Instance type, e.g. `t3.micro`.
    pub instance_type: String,
    /// Availability zone, e.g. `us-east-1a`.
    pub zone: Option<String>,
    /// Spot or on-demand.
    pub market: Market,
    /// The spot request that launched it, if AWS reports one.
    pub spot_request_id: Option<SpotRequestId>,
    /// Public IPv4 address, if any.
    pub public_ip: Option<String>,
    /// Private IPv4 address, if any.
    pub private_ip: Option<String>,
    /// When it was launched.
    pub launched_at: Option<SystemTime>,
    /// The AMI it runs.
    pub image_id: Option<ImageId>,
    /// Its subnet, if in a VPC.
    pub subnet_id: Option<String>,
    /// Its VPC.
    pub vpc_id: Option<String>,
    /// All its tags.
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// The address to reach it at: public IP, else private IP.
    pub fn address(&self) -> Option<&str> {
        self.public_ip.as_deref().or(self.private_ip.as_deref())
    }

    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// State of a spot instance request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SpotRequestState {
    /// Waiting to be fulfilled.
    Open,
    /// Fulfilled: an instance runs for it.
    Active,
    /// Ended (instance gone, expired or failed validation).
    Closed,
    /// Cancelled by the user.
    Cancelled,
    /// Failed.
    Failed,
}

impl SpotRequestState {
    /// Parses the EC2 state name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "open" => Self::Open,
            "active" => Self::Active,
            "closed" => Self::Closed,
            "cancelled" => Self::Cancelled,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    /// The EC2 state name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Active => "active",
            Self::Closed => "closed",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }
}

/// A spot instance request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpotRequest {
    /// Request id.
    pub id: SpotRequestId,
    /// Request state.
    pub state: SpotRequestState,
    /// The instance that fulfilled it, if any.
    pub instance_id: Option<InstanceId>,
    /// Requested instance type.
    pub instance_type: Option<String>,
    /// AWS's status code (`pending-evaluation`, `fulfilled`,
    /// `capacity-not-available`, `price-too-low`, …) and its message.
    #[serde(default)]
    pub status: Option<(String, String)>,
    /// All its tags.
    pub tags: BTreeMap<String, String>,
}

impl SpotRequest {
    /// The value of tag `key`, if set.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.get(key).map(String::as_str)
    }
}

/// The current spot price of one instance type in one zone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpotPrice {
    /// Instance type.
    pub instance_type: String,
    /// Availability zone.
    pub zone: String,
    /// USD per hour.
    pub price: f64,
}

/// A tag filter: every listed tag must be present, with the value when one is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagFilter {
    /// `(key, Some(value))` matches that value; `(key, None)` matches any value.
    pub tags: Vec<(String, Option<String>)>,
}

impl TagFilter {
    /// Adds `key = value`.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.tags.push((key.to_owned(), Some(value.to_owned())));
        self
    }

    /// Adds "tag `key` is present".
    pub fn with_key(mut self, key: &str) -> Self {
        self.tags.push((key.to_owned(), None));
        self
    }

    /// Whether a resource with `tags` matches.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        self.tags.iter().all(|(k, v)| match (tags.get(k), v) {
            (Some(have), Some(want)) => have == want,
            (Some(_), None) => true,
            (None, _) => false,
        })
    }
}

/// Everything needed to launch one instance.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchSpec {
    /// AMI to boot.
    pub image_id: ImageId,
    /// Instance type.
    pub instance_type: String,
    /// Spot (one-time, terminate on interruption) or on-demand.
    pub market: Market,
    /// Zone to place it in; ignored by AWS when `subnet_id` is set (the subnet pins the zone).
    pub zone: Option<String>,
    /// Subnet to launch into.
    pub subnet_id: Option<String>,
    /// Security group ids.
    pub security_group_ids: Vec<String>,
    /// Key pair name.
    pub key_name: Option<String>,
    /// User data, plain text (base64-encoded by the cloud layer).
    pub user_data: Option<String>,
    /// Tags set at creation on the instance, its volumes and its spot request.
    pub tags: BTreeMap<String, String>,
    /// Idempotency token (≤ 64 ASCII characters): retrying with the same token
    /// returns the first launch instead of making a second instance.
    pub client_token: String,
    /// Root volume size and type; default: the image's.
    pub root_volume: Option<RootVolume>,
    /// IAM instance profile name (or ARN) for the instance role.
    pub iam_instance_profile: Option<String>,
    /// Spot only: the most to pay per hour, sent as `MaxPrice` (AWS then
    /// interrupts the instance when the price rises above it); `None`: up
    /// to the on-demand price, AWS's default.
    pub spot_max_price: Option<f64>,
    /// Whether the instance metadata service answers without a session
    /// token (IMDSv1); required (IMDSv2 only) unless asked otherwise.
    pub metadata_tokens: MetadataTokens,
}

/// Whether the instance metadata service needs a session token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MetadataTokens {
    /// IMDSv2 only: a request forged through the instance (SSRF) cannot read
    /// its role's credentials without a token from a PUT.
    #[default]
    Required,
    /// IMDSv1 too, for images whose scripts still read the metadata
    /// without a token.
    Optional,
}

impl LaunchSpec {
    /// A spot launch of `image_id` as `instance_type` with a fresh random
    /// client token and everything else defaulted; set fields to customize.
    pub fn new(image_id: ImageId, instance_type: impl Into<String>) -> Self {
        Self {
            image_id,
            instance_type: instance_type.into(),
            market: Market::Spot,
            zone: None,
            subnet_id: None,
            security_group_ids: Vec::new(),
            key_name: None,
            user_data: None,
            tags: BTreeMap::new(),
            client_token: random_token(),
            root_volume: None,
            iam_instance_profile: None,
            spot_max_price: None,
            metadata_tokens: MetadataTokens::Required,
        }
    }
}

/// A client token unique to this call: time, process id and a counter, hashed.
pub fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("skr-{:016x}", h.finish())
}

id_newtype!(
    /// An EBS volume id (`vol-…`).
    VolumeId
);
id_newtype!(
    /// An EBS snapshot id (`snap-…`).
    SnapshotId
);

/// CPU architecture of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// x86-64 (Ubuntu calls it `amd64`, EC2 `x86_64`).
    #[default]
    Amd64,
    /// 64-bit ARM (Graviton).
    Arm64,
}

impl Arch {
    /// Ubuntu's (and the SSM parameter path's) name: `amd64` or `arm64`.
    pub fn ubuntu_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// EC2's name: `x86_64` or `arm64`.
    pub fn ec2_name(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Parses `amd64`, `x86_64`, `arm64` or `aarch64`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "amd64" | "x86_64" => Some(Arch::Amd64),
            "arm64" | "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }
}

/// What a config's `image` names: an AMI id or an alias resolved at launch time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// A literal AMI id.
    Id(ImageId),
    /// The newest Canonical Ubuntu server image of a release (`ubuntu:24.04[:arm64]`).
    Ubuntu {
        /// Release number, e.g. `24.04`.
        release: String,
        /// Architecture.
        arch: Arch,
    },
    /// The newest Canonical Ubuntu **daily** build of a release
    /// (`ubuntu:24.04:daily`, `ubuntu:noble:arm64:daily`).
    UbuntuDaily {
        /// Release number, e.g. `24.04`.
        release: String,
        /// Architecture.
        arch: Arch,
    },
    /// The newest Amazon Linux 2023 image (`al2023[:arm64]`).
    AmazonLinux2023 {
        /// Architecture.
        arch: Arch,
    },
}

impl ImageRef {
    /// Parses `ami-…`, `ubuntu:RELEASE[:ARCH]` or `al2023[:ARCH]`; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(hex) = s.strip_prefix("ami-")
            && !hex.is_empty()
            && hex.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Ok(ImageRef::Id(ImageId::new(s)));
        }
        let mut parts = s.split(':');
        let head = parts.next().unwrap_or("");
        let mut rest: Vec<&str> = parts.collect();
        let daily = head == "ubuntu" && rest.last() == Some(&"daily");
        if daily {
            rest.pop();
        }
        let arch = |p: Option<&&str>| -> Result<Arch, String> {
            match p {
                None => Ok(Arch::Amd64),
                Some(a) => Arch::parse(a)
                    .ok_or_else(|| format!("unknown architecture {a:?} (amd64 or arm64)")),
            }
        };
        match (head, rest.len()) {
            ("ubuntu", 1 | 2) => {
                let release = ubuntu_codename(rest[0]).unwrap_or(rest[0]);
                let valid = release.split('.').count() == 2
                    && release
                        .split('.')
                        .all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
                if !valid {
                    return Err(format!(
                        "Ubuntu release {release:?} is neither of the form 24.04 nor a codename (noble, jammy, focal, …)"
                    ));
                }
                let (release, arch) = (release.to_owned(), arch(rest.get(1))?);
                if daily {
                    if ubuntu_release_codename(&release).is_none() {
                        return Err(format!(
                            "no codename known for Ubuntu {release}: daily images are named by codename"
                        ));
                    }
                    return Ok(ImageRef::UbuntuDaily { release, arch });
                }
                Ok(ImageRef::Ubuntu { release, arch })
            }
            ("al2023", 0 | 1) => Ok(ImageRef::AmazonLinux2023 {
                arch: arch(rest.first())?,
            }),
            _ => Err(format!(
                "image {s:?} is neither an AMI id (ami-…) nor an alias (ubuntu:24.04, ubuntu:noble, ubuntu:24.04:arm64, ubuntu:24.04:daily, al2023, al2023:arm64)"
            )),
        }
    }
}

/// Ubuntu releases spotkeeper knows by codename.
const UBUNTU_CODENAMES: &[(&str, &str)] = &[
    ("xenial", "16.04"),
    ("bionic", "18.04"),
    ("focal", "20.04"),
    ("jammy", "22.04"),
    ("noble", "24.04"),
    ("oracular", "24.10"),
    ("plucky", "25.04"),
    ("questing", "25.10"),
];

/// The release number of an Ubuntu codename (`noble` → `24.04`).
pub fn ubuntu_codename(name: &str) -> Option<&'static str> {
    UBUNTU_CODENAMES
        .iter()
        .find(|(c, _)| *c == name)
        .map(|(_, r)| *r)
}

/// The codename of an Ubuntu release number (`24.04` → `noble`).
pub fn ubuntu_release_codename(release: &str) -> Option<&'static str> {
    UBUNTU_CODENAMES
        .iter()
        .find(|(_, r)| *r == release)
        .map(|(c, _)| *c)
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Id(id) => write!(f, "{id}"),
            ImageRef::Ubuntu {
                release,
                arch: Arch::Amd64,
            } => write!(f, "ubuntu:{release}"),
            ImageRef::Ubuntu { release, arch } => {
                write!(f, "ubuntu:{release}:{}", arch.ubuntu_name())
            }
            ImageRef::UbuntuDaily {
                release,
                arch: Arch::Amd64,
            } => write!(f, "ubuntu:{release}:daily"),
            ImageRef::UbuntuDaily { release, arch } => {
                write!(f, "ubuntu:{release}:{}:daily", arch.ubuntu_name())
            }
            ImageRef::AmazonLinux2023 { arch: Arch::Amd64 } => write!(f, "al2023"),
            ImageRef::AmazonLinux2023 { arch } => write!(f, "al2023:{}", arch.ubuntu_name()),
        }
    }
}

/// An AMI.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Image id.
    pub id: ImageId,
    /// Name.
    pub name: Option<String>,
    /// `pending`, `available`, `failed` …
    pub state: String,
    /// Creation time as AWS reports it (RFC 3339).
    pub created_at: Option<String>,
    /// Snapshots behind its block devices.
    pub snapshot_ids: Vec<SnapshotId>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// Which of an instance's EBS volumes an image made of it carries.
///
/// AWS's `CreateImage` records every EBS volume attached to the instance as
/// a block device mapping of the new image (a snapshot of each), and every
/// launch from the image creates those volumes again, unless the call maps
/// the device to `NoDevice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ImageVolumes {
    /// The root volume only: every other device of the instance is left
    /// out (`NoDevice`). What an image of a box with its own persistent
    /// volumes needs: a launch from it must not bring stale copies of them.
    #[default]
    RootOnly,
    /// Every attached volume, AWS's default.
    All,
}

/// Root volume settings for a launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootVolume {
    /// Size in GiB.
    pub size_gb: i32,
    /// Volume type, e.g. `gp3`.
    pub kind: String,
}

/// An EBS volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume id.
    pub id: VolumeId,
    /// Its availability zone.
    pub zone: String,
    /// Size in GiB.
    pub size_gb: i32,
    /// Volume type (`gp3` …).
    pub kind: String,
    /// `creating`, `available`, `in-use`, `deleting` …
    pub state: String,
    /// Where it is attached: (instance, device name).
    pub attachments: Vec<(InstanceId, String)>,
    /// The snapshot it was created from.
    pub snapshot_id: Option<SnapshotId>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// An elastic network interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Interface id (`eni-…`).
    pub id: String,
    /// Its subnet.
    pub subnet_id: Option<String>,
    /// Primary private address.
    pub private_ip: Option<String>,
    /// Attached instance and device index.
    pub attachment: Option<(InstanceId, i32)>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// An imported key pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPair {
    /// Its name.
    pub name: String,
    /// AWS's fingerprint.
    pub fingerprint: Option<String>,
    /// Whether this call imported it (false: it existed already).
    pub created: bool,
}

/// An EBS snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot id.
    pub id: SnapshotId,
    /// The volume it was taken of.
    pub volume_id: Option<VolumeId>,
    /// `pending`, `completed`, `error`.
    pub state: String,
    /// When it was started (RFC 3339).
    pub started_at: Option<String>,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// A DNS record set as Route53 holds it (one name, one type).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// Fully qualified name, with the trailing dot.
    pub name: String,
    /// Addresses (A) or strings without their quotes (TXT).
    pub values: Vec<String>,
    /// TTL in seconds.
    pub ttl: i64,
}

/// The record types spotkeeper reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordType {
    /// An address record.
    A,
    /// A text record (spotkeeper's ownership marks).
    Txt,
}

impl RecordType {
    /// How Route53 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Txt => "TXT",
        }
    }
}

/// What a change does to a record set, with Route53's semantics: `Create`
/// fails when the set exists, `Delete` when it does not or its values differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsAction {
    /// Create; fails if it exists.
    Create,
    /// Create or replace.
    Upsert,
    /// Delete exactly this set.
    Delete,
}

/// One change of a batch; a batch succeeds or fails as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsChange {
    /// What to do.
    pub action: DnsAction,
    /// The record's type.
    pub kind: RecordType,
    /// The record set.
    pub record: DnsRecord,
}

/// `name` with exactly one trailing dot, lower case: how Route53 spells names.
pub fn fqdn(name: &str) -> String {
    format!(
        "{}.",
        name.trim().trim_end_matches('.').to_ascii_lowercase()
    )
}

#[cfg(test)]
mod image_ref_tests;
