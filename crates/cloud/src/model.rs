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
    /// The launch intent (client token) that created the resource.
    pub const INTENT: &str = "spotkeeper:intent";
    /// Set on instances and spot requests that `stop` is taking down, before it
    /// terminates them, so no later `up` (or daemon) mistakes them for the box.
    pub const STOPPED: &str = "spotkeeper:stopped";
    /// The conventional EC2 console name.
    pub const NAME: &str = "Name";
}

/// How an instance is paid for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// All its tags.
    pub tags: BTreeMap<String, String>,
}

impl Instance {
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
}
