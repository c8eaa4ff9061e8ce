//! The config file: TOML parsed into raw structs that remember where each value
//! stands, then validated into [`Config`]. Every error names the file, line and
//! column; nothing is read from AWS or written anywhere until it is valid.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use spotkeeper_cloud::{ImageRef, Market, RootVolume, SshSettings};
use toml::Spanned;

/// File name looked for in the working directory when neither `--config` nor
/// `$SPOTKEEPER_CONFIG` names one.
pub const DEFAULT_FILE: &str = "spotkeeper.toml";

/// Reconcile interval when `[daemon] interval` is not set: events wake the
/// daemon at once, so the timer only catches what no event announced.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Where the API listens by default: loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7878";

/// A secret (API token): never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The value, for comparing and storing — never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The event queue's name when `[daemon] queue` is not set.
pub const DEFAULT_QUEUE: &str = "spotkeeper-events";

/// Owner tag value when the config does not set `owner`.
pub const DEFAULT_OWNER: &str = "spotkeeper";

/// How long `up` waits for a box to answer when `ready` sets no timeout: boot
/// plus cloud-init on a small instance takes one to three minutes.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The longest `ready.timeout` accepted: a box that has not answered in an
/// hour will not, and its task would otherwise hold the box that long.
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// A config error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when the error has a place in the file.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.file.display(), self.message),
            _ => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// Value of the `spotkeeper:owner` tag on everything this config creates.
    pub owner: String,
    /// Where AWS is.
    pub aws: AwsSettings,
    /// State file from `[daemon] state`, if set.
    pub state: Option<PathBuf>,
    /// The SQS queue `setup` creates for EC2 events (`[daemon] queue`).
    pub queue: String,
    /// Time between two reconcile passes of the daemon (`[daemon] interval`).
    pub interval: Duration,
    /// How many box and pool tasks the daemon runs at once (`[daemon] max_tasks`).
    pub max_tasks: usize,
    /// How long processed event ids, doomed and seen instances and the event
    /// log are kept (`[daemon] retention`).
    pub retention: Duration,
    /// Where the daemon's HTTP API listens (`[api] listen`).
    pub api_listen: std::net::SocketAddr,
    /// `[api] allow_commands`: boxes registered through the API may carry
    /// settings that make the daemon run a command or connect to an address
    /// of the caller's choosing (a command ready check, `ready.host`, `ssh`).
    /// Off by default: the API token is not a shell on the daemon's host.
    pub api_allow_commands: bool,
    /// `[api] instance_profiles`: the IAM instance profiles a box or pool
    /// registered through the API may name (none by default).
    pub api_instance_profiles: Vec<String>,
    /// The API token from `[api] token`, if set there.
    pub api_token: Option<Secret>,
    /// The boxes, by name.
    pub boxes: BTreeMap<String, BoxSpec>,
    /// The worker pools, by name.
    pub pools: BTreeMap<String, crate::pools::PoolSpec>,
    /// `[[notify]]` sinks told about events.
    pub notify: Vec<crate::notify::Sink>,
    /// `[cost] on_demand`: on-demand USD/hour per instance type, used by
    /// `cost` instead of the AWS Price List (negotiated rates, offline).
    pub on_demand_prices: BTreeMap<String, f64>,
}

impl Config {
    /// The box called `name`, or an error listing the boxes there are.
    pub fn box_spec(&self, name: &str) -> Result<&BoxSpec, ConfigError> {
        self.boxes.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.boxes.keys().map(String::as_str).collect();
            ConfigError {
                file: self.path.clone(),
                line: None,
                column: None,
                message: if known.is_empty() {
                    format!("no box named {name:?}: the file defines no [box.NAME] section")
                } else {
                    format!(
                        "no box named {name:?}; the file defines: {}",
                        known.join(", ")
                    )
                },
            }
        })
    }
}

/// `[aws]`: region, profile, endpoint. Never credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// Region.
    pub region: Option<String>,
    /// Named profile.
    pub profile: Option<String>,
    /// Endpoint override (an emulator).
    pub endpoint_url: Option<String>,
    /// `operation_timeout`: one AWS call, retries included.
    pub operation_timeout: Option<Duration>,
    /// `attempt_timeout`: one attempt of an AWS call.
    pub attempt_timeout: Option<Duration>,
    /// `max_attempts`: attempts per AWS call.
    pub max_attempts: Option<u32>,
    /// `retry_mode = "adaptive"` (default `"standard"`).
    pub adaptive_retry: bool,
}

/// How long the state keeps processed event ids, doomed and seen instances
/// and the event log when `[daemon] retention` is not set: a month of history
/// to look back on, and a file that does not grow forever.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The longest `aws.operation_timeout` / `aws.attempt_timeout` accepted: a
/// call that may hang longer would hold a box's task past its two minutes.
pub const MAX_AWS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The most attempts per AWS call accepted (`aws.max_attempts`).
pub const MAX_AWS_ATTEMPTS: u32 = 10;

/// Tasks the daemon runs at once when `[daemon] max_tasks` is not set: every
/// box of a wave of interruptions launches at once, while a fleet-wide image
/// schedule cannot open thousands of AWS calls together.
pub const DEFAULT_MAX_TASKS: usize = 64;

/// One `[box.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxSpec {
    /// The box name (the table key).
    pub name: String,
    /// AMI id or alias (`ubuntu:24.04`, `al2023` …), resolved at launch.
    pub image: ImageRef,
    /// Instance types, most preferred first.
    pub instance_types: Vec<String>,
    /// Price ceiling in USD/hour, checked by spotkeeper against the spot price.
    pub max_price: f64,
    /// Allowed zones; `None` means every zone of the region.
    pub zones: Option<Vec<String>>,
    /// Spot (default) or on-demand.
    pub market: Market,
    /// Key pair name.
    pub key_name: Option<String>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Subnet id.
    pub subnet: Option<String>,
    /// User data (inline, or read from `user_data_file`).
    pub user_data: Option<String>,
    /// User tags.
    pub tags: BTreeMap<String, String>,
    /// How to tell the box is up.
    pub ready: ReadyCheck,
    /// Root disk size and type; default: the image's.
    pub root_disk: Option<RootVolume>,
    /// IAM instance profile (name or ARN) giving the box its role.
    pub iam_instance_profile: Option<String>,
    /// How to reach the box over SSH (`exec`, `ssh`).
    pub ssh: SshSettings,
    /// A data volume that outlives instances.
    pub data_volume: Option<VolumeSpec>,
    /// A persistent root volume the boot chain-loads with pivot_root.
    pub root_volume: Option<VolumeSpec>,
    /// Whether `up` may move the volumes to another zone (by snapshot).
    pub move_volume: bool,
    /// A Route53 A record kept pointing at the box.
    pub dns: Option<DnsSpec>,
    /// Keep the DNS record when the box stops.
    pub keep_dns: bool,
    /// An Elastic IP allocation associated with each new instance.
    pub elastic_ip: Option<String>,
    /// `adopt_elastic_ip = true`: the address may be taken from an instance
    /// spotkeeper does not own. Without it, it is moved only from the box's
    /// own instances.
    pub adopt_elastic_ip: bool,
    /// Launch from the box's newest image (`image = "box:latest"` or
    /// `image_from_box = true`), else from `image`.
    pub image_from_box: bool,
    /// Image retention and refresh schedule.
    pub images: ImagePolicy,
    /// On a rebalance recommendation, start the replacement early (`replace`)
    /// or do nothing (`ignore`, default).
    pub replace_on_rebalance: bool,
    /// When no spot offering can be had (none under the ceiling, no
    /// capacity, a spot quota), launch on-demand instead (`fallback =
    /// "on-demand"`); the daemon moves the box back to spot at the next chance.
    pub fallback_on_demand: bool,
    /// Who holds the ceiling: spotkeeper (each pass moves a box whose price
    /// rose above it, when there is an offering under it) or AWS too
    /// (`price_cap = "aws"`: sent as the spot `MaxPrice`, so AWS interrupts
    /// above it, as the original launcher's bid did).
    pub price_cap: PriceCap,
}

/// `price_cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PriceCap {
    /// spotkeeper compares prices with the ceiling (at launch and each pass).
    #[default]
    Spotkeeper,
    /// The ceiling is also sent to AWS as `MaxPrice`.
    Aws,
}

/// What happens to a volume when its box is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Keep the volume (default).
    Retain,
    /// Snapshot it, then delete it; the next `up` restores it from the snapshot.
    Snapshot,
    /// Delete it and its data.
    Delete,
}

/// How many stop snapshots of a volume are kept unless the config says `keep`.
pub const DEFAULT_STOP_SNAPSHOTS: usize = 3;

/// `data_volume` / `root_volume`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Its `Name` tag: how `up` finds it again.
    pub name: String,
    /// Size for a new volume (GiB); a root volume defaults to the image's size.
    pub size_gb: Option<i32>,
    /// EBS type for a new volume.
    pub kind: String,
    /// Mount point (data volumes).
    pub mount: String,
    /// Stop policy.
    pub on_stop: OnStop,
    /// `adopt = true`: a volume of this name that spotkeeper did not create
    /// may be used (and is then tagged as this owner's). Without it, such a
    /// volume stops `up` before anything is launched.
    pub adopt: bool,
    /// `keep`: with `on_stop = "snapshot"`, how many of the volume's stop
    /// snapshots are kept (the newest; older ones are deleted after each stop).
    pub keep: usize,
}

/// Which address the DNS record points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsAddress {
    /// The public IPv4 address.
    Public,
    /// The private address.
    Private,
    /// Both: the public address in the public zone and the private one in
    /// the private zone of the same name (split-horizon).
    Both,
}

/// `dns = { zone, name, ttl, address }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSpec {
    /// Hosted zone name.
    pub zone: String,
    /// Record name.
    pub name: String,
    /// TTL in seconds; short, because the address changes on every replacement.
    pub ttl: i64,
    /// Public or private address.
    pub address: DnsAddress,
    /// `adopt = true`: a record of this name that spotkeeper did not create
    /// may be taken over (it is then marked as the box's).
    pub adopt: bool,
    /// Which hosted zone of that name: the private one (`private = true`),
    /// else the public one; or exactly this zone id (`zone_id`).
    pub private: bool,
    /// `zone_id = "Z…"`: the hosted zone, given by id.
    pub zone_id: Option<String>,
}

/// `images = { keep, every }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImagePolicy {
    /// Keep this many newest images of the box; older ones are deregistered with their snapshots.
    pub keep: Option<usize>,
    /// Make a fresh image this often (the daemon).
    pub every: Option<Duration>,
}

/// How `up` decides a running box is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyCheck {
    /// Running is ready.
    None,
    /// A TCP connect to `host` (default: the instance's public, else private address) succeeds.
    Tcp {
        /// Address override.
        host: Option<String>,
        /// Port.
        port: u16,
        /// Give up after this long.
        timeout: Duration,
    },
    /// A shell command exits 0; `{ip}` and `{id}` are replaced by the instance's address and id.
    Command {
        /// The command, run with `sh -c`.
        command: String,
        /// Give up after this long.
        timeout: Duration,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    owner: Option<Spanned<String>>,
    #[serde(default)]
    aws: RawAws,
    daemon: Option<RawDaemon>,
    api: Option<RawApi>,
    #[serde(default, rename = "box")]
    boxes: BTreeMap<Spanned<String>, RawBox>,
    #[serde(default, rename = "pool")]
    pools: BTreeMap<Spanned<String>, crate::pools::spec::RawPool>,
    #[serde(default)]
    notify: Vec<Spanned<crate::notify::RawSink>>,
    cost: Option<RawCost>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCost {
    #[serde(default)]
    on_demand: BTreeMap<Spanned<String>, Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<Spanned<String>>,
    profile: Option<String>,
    endpoint_url: Option<Spanned<String>>,
    operation_timeout: Option<Spanned<String>>,
    attempt_timeout: Option<Spanned<String>>,
    max_attempts: Option<Spanned<i64>>,
    retry_mode: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<Spanned<String>>,
    token: Option<String>,
    allow_commands: Option<bool>,
    instance_profiles: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state: Option<String>,
    queue: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    max_tasks: Option<Spanned<i64>>,
    retention: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBox {
    image: Spanned<String>,
    instance_types: Spanned<Vec<Spanned<String>>>,
    max_price: Spanned<f64>,
    zones: Option<Spanned<Vec<String>>>,
    market: Option<Spanned<String>>,
    key_name: Option<String>,
    #[serde(default)]
    security_groups: Vec<String>,
    subnet: Option<String>,
    user_data: Option<Spanned<String>>,
    user_data_file: Option<Spanned<String>>,
    #[serde(default)]
    tags: BTreeMap<Spanned<String>, String>,
    ready: Option<Spanned<RawReady>>,
    root_disk: Option<Spanned<RawDisk>>,
    iam_instance_profile: Option<String>,
    ssh: Option<Spanned<RawSsh>>,
    base_image: Option<Spanned<String>>,
    image_from_box: Option<bool>,
    data_volume: Option<Spanned<RawVolume>>,
    root_volume: Option<Spanned<RawVolume>>,
    #[serde(default)]
    move_volume: bool,
    dns: Option<Spanned<RawDns>>,
    #[serde(default)]
    keep_dns: bool,
    elastic_ip: Option<Spanned<String>>,
    adopt_elastic_ip: Option<bool>,
    images: Option<Spanned<RawImages>>,
    fallback: Option<Spanned<String>>,
    on_rebalance: Option<Spanned<String>>,
    price_cap: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVolume {
    name: String,
    size_gb: Option<i32>,
    #[serde(rename = "type", default = "default_disk_type")]
    kind: String,
    mount: Option<String>,
    on_stop: Option<String>,
    adopt: Option<bool>,
    keep: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    zone: String,
    name: String,
    #[serde(default = "default_ttl")]
    ttl: i64,
    address: Option<String>,
    #[serde(default)]
    adopt: bool,
    #[serde(default)]
    private: bool,
    zone_id: Option<String>,
}

fn default_ttl() -> i64 {
    60
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    keep: Option<usize>,
    every: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDisk {
    size_gb: i32,
    #[serde(rename = "type", default = "default_disk_type")]
    kind: String,
}

fn default_disk_type() -> String {
    "gp3".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    user: String,
    key_file: Option<String>,
    #[serde(default = "default_port")]
    port: u16,
    host: Option<String>,
    jump: Option<String>,
    known_hosts: Option<String>,
    connect_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "check", rename_all = "lowercase", deny_unknown_fields)]
enum RawReady {
    None {},
    Tcp {
        #[serde(default = "default_port")]
        port: u16,
        host: Option<String>,
        timeout: Option<String>,
    },
    Command {
        command: String,
        timeout: Option<String>,
    },
}

fn default_port() -> u16 {
    22
}

/// Where the config file is: `--config`, else `$SPOTKEEPER_CONFIG`, else `./spotkeeper.toml`.
pub fn locate(flag: Option<&Path>, env: Option<&str>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| env.filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE))
}

/// Reads and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: None,
        column: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config `text` as if read from `path` (relative `user_data_file`s
/// are resolved against `path`'s directory).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let at = |span: Option<Range<usize>>, message: String| locate_error(path, text, span, message);
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = match e.span().and_then(|span| key_before(text, span.start)) {
            Some(key) => format!("{key}: {}", e.message().trim()),
            None => e.message().trim().to_owned(),
        };
        at(e.span(), message)
    })?;

    let owner = match raw.owner {
        Some(o) => {
            check_name(o.get_ref()).map_err(|m| at(Some(o.span()), format!("owner: {m}")))?;
            o.into_inner()
        }
        None => DEFAULT_OWNER.to_owned(),
    };
    if let Some(region) = &raw.aws.region
        && region.get_ref().trim().is_empty()
    {
        return Err(at(Some(region.span()), "aws.region is empty".into()));
    }
    if let Some(url) = &raw.aws.endpoint_url {
        let u = url.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(at(
                Some(url.span()),
                format!("aws.endpoint_url {u:?} is not an http(s) URL"),
            ));
        }
    }
    let queue = match raw.daemon.as_ref().and_then(|d| d.queue.as_ref()) {
        None => DEFAULT_QUEUE.to_owned(),
        Some(q) => {
            let name = q.get_ref();
            // SQS: 1-80 characters, alphanumerics, hyphens and underscores.
            if name.is_empty()
                || name.len() > 80
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(at(
                    Some(q.span()),
                    format!(
                        "daemon.queue {name:?} is not an SQS queue name (1-80 letters, digits, - or _)"
                    ),
                ));
            }
            name.clone()
        }
    };
    let interval = match raw.daemon.as_ref().and_then(|d| d.interval.as_ref()) {
        None => DEFAULT_INTERVAL,
        Some(i) => {
            let d = humantime::parse_duration(i.get_ref()).map_err(|e| {
                at(
                    Some(i.span()),
                    format!("daemon.interval {:?}: {e}", i.get_ref()),
                )
            })?;
            if d < Duration::from_secs(1) {
                return Err(at(
                    Some(i.span()),
                    "daemon.interval must be at least 1s".into(),
                ));
            }
            d
        }
    };
    let max_tasks = match raw.daemon.as_ref().and_then(|d| d.max_tasks.as_ref()) {
        None => DEFAULT_MAX_TASKS,
        Some(n) if (1..=10_000).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(at(
                Some(n.span()),
                format!(
                    "daemon.max_tasks must be from 1 to 10000, not {}",
                    n.get_ref()
                ),
            ));
        }
    };
    let retention = match raw.daemon.as_ref().and_then(|d| d.retention.as_ref()) {
        None => DEFAULT_RETENTION,
        Some(r) => {
            let d = humantime::parse_duration(r.get_ref()).map_err(|e| {
                at(
                    Some(r.span()),
                    format!("daemon.retention {:?}: {e}", r.get_ref()),
                )
            })?;
            if d < Duration::from_secs(3600) {
                return Err(at(
                    Some(r.span()),
                    "daemon.retention must be at least 1h (events are redelivered for minutes)"
                        .into(),
                ));
            }
            d
        }
    };
    let aws_timeout =
        |t: &Option<Spanned<String>>, key: &str| -> Result<Option<Duration>, ConfigError> {
            let Some(t) = t else { return Ok(None) };
            let d = humantime::parse_duration(t.get_ref())
                .map_err(|e| at(Some(t.span()), format!("aws.{key} {:?}: {e}", t.get_ref())))?;
            if d < Duration::from_millis(100) || d > MAX_AWS_TIMEOUT {
                return Err(at(
                    Some(t.span()),
                    format!(
                        "aws.{key} must be from 100ms to {}",
                        humantime::format_duration(MAX_AWS_TIMEOUT)
                    ),
                ));
            }
            Ok(Some(d))
        };
    let operation_timeout = aws_timeout(&raw.aws.operation_timeout, "operation_timeout")?;
    let attempt_timeout = aws_timeout(&raw.aws.attempt_timeout, "attempt_timeout")?;
    let max_attempts = match &raw.aws.max_attempts {
        None => None,
        Some(n) if (1..=i64::from(MAX_AWS_ATTEMPTS)).contains(n.get_ref()) => {
            Some(*n.get_ref() as u32)
        }
        Some(n) => {
            return Err(at(
                Some(n.span()),
                format!(
                    "aws.max_attempts must be from 1 to {MAX_AWS_ATTEMPTS}, not {}",
                    n.get_ref()
                ),
            ));
        }
    };
    let adaptive_retry = match raw.aws.retry_mode.as_ref() {
        None => false,
        Some(m) => match m.get_ref().as_str() {
            "standard" => false,
            "adaptive" => true,
            other => {
                return Err(at(
                    Some(m.span()),
                    format!("aws.retry_mode {other:?}: expected \"standard\" or \"adaptive\""),
                ));
            }
        },
    };
    let api_listen = match raw.api.as_ref().and_then(|a| a.listen.as_ref()) {
        None => DEFAULT_API_LISTEN
            .parse()
            .expect("the default address parses"),
        Some(l) => l.get_ref().parse().map_err(|_| {
            at(
                Some(l.span()),
                format!(
                    "api.listen {:?} is not an address like 127.0.0.1:7878",
                    l.get_ref()
                ),
            )
        })?,
    };
    let api_token = raw
        .api
        .as_ref()
        .and_then(|a| a.token.clone())
        .map(Secret::new);
    if api_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
        return Err(at(None, "api.token must be at least 16 characters".into()));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut boxes = BTreeMap::new();
    for (name, b) in raw.boxes {
        let spec = validate_box(name.get_ref(), b, base, &at).map_err(|e| ConfigError {
            message: format!("box {:?}: {}", name.get_ref(), e.message),
            ..e
        })?;
        check_name(name.get_ref()).map_err(|m| at(Some(name.span()), format!("box name: {m}")))?;
        boxes.insert(name.into_inner(), spec);
    }
    let mut pools = BTreeMap::new();
    for (name, p) in raw.pools {
        let spec =
            crate::pools::spec::validate_pool(name.get_ref(), p, base, &at).map_err(|e| {
                ConfigError {
                    message: format!("pool {:?}: {}", name.get_ref(), e.message),
                    ..e
                }
            })?;
        check_name(name.get_ref()).map_err(|m| at(Some(name.span()), format!("pool name: {m}")))?;
        if boxes.contains_key(name.get_ref()) {
            return Err(at(
                Some(name.span()),
                format!(
                    "pool {:?} has the name of a box; give it another one",
                    name.get_ref()
                ),
            ));
        }
        pools.insert(name.into_inner(), spec);
    }
    let notify = crate::notify::validate(raw.notify, &at)?;
    let mut on_demand_prices = BTreeMap::new();
    for (t, p) in raw.cost.map(|c| c.on_demand).unwrap_or_default() {
        if !is_instance_type(t.get_ref()) {
            return Err(at(
                Some(t.span()),
                format!("cost.on_demand: {:?} is not an instance type", t.get_ref()),
            ));
        }
        let price = *p.get_ref();
        if !(price.is_finite() && price > 0.0 && price < 1000.0) {
            return Err(at(
                Some(p.span()),
                format!("cost.on_demand: {price} is not a price in USD per hour"),
            ));
        }
        on_demand_prices.insert(t.into_inner(), price);
    }
    Ok(Config {
        path: path.to_path_buf(),
        owner,
        aws: AwsSettings {
            region: raw.aws.region.map(Spanned::into_inner),
            profile: raw.aws.profile,
            endpoint_url: raw.aws.endpoint_url.map(Spanned::into_inner),
            operation_timeout,
            attempt_timeout,
            max_attempts,
            adaptive_retry,
        },
        state: raw
            .daemon
            .as_ref()
            .and_then(|d| d.state.clone())
            .map(PathBuf::from),
        queue,
        interval,
        max_tasks,
        retention,
        api_listen,
        api_token,
        api_allow_commands: raw
            .api
            .as_ref()
            .and_then(|a| a.allow_commands)
            .unwrap_or(false),
        api_instance_profiles: raw
            .api
            .as_ref()
            .and_then(|a| a.instance_profiles.clone())
            .unwrap_or_default(),
        boxes,
        pools,
        notify,
        on_demand_prices,
    })
}

fn validate_box(
    name: &str,
    b: RawBox,
    base: &Path,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<BoxSpec, ConfigError> {
    // `image = "box:latest"`: the box's newest image, falling back to `base_image`.
    let (image, image_from_box) = if b.image.get_ref().trim() == "box:latest" {
        let base = b.base_image.as_ref().ok_or_else(|| {
            at(
                Some(b.image.span()),
                "image = \"box:latest\" needs base_image = \"…\" for when the box has no image yet"
                    .into(),
            )
        })?;
        (
            ImageRef::parse(base.get_ref()).map_err(|m| at(Some(base.span()), m))?,
            true,
        )
    } else {
        if let Some(base) = &b.base_image {
            return Err(at(
                Some(base.span()),
                "base_image only goes with image = \"box:latest\"".into(),
            ));
        }
        let image = ImageRef::parse(b.image.get_ref()).map_err(|m| at(Some(b.image.span()), m))?;
        (image, b.image_from_box.unwrap_or(false))
    };
    let types_span = b.instance_types.span();
    let mut instance_types: Vec<String> = Vec::new();
    for t in b.instance_types.into_inner() {
        let ty = t.get_ref().trim();
        if !is_instance_type(ty) {
            return Err(at(
                Some(t.span()),
                format!("instance type {ty:?} is not of the form family.size, e.g. t3.micro"),
            ));
        }
        if instance_types.iter().any(|have| have == ty) {
            return Err(at(
                Some(t.span()),
                format!("instance type {ty:?} is listed twice"),
            ));
        }
        instance_types.push(ty.to_owned());
    }
    if instance_types.is_empty() {
        return Err(at(
            Some(types_span),
            "instance_types is empty: list at least one type".into(),
        ));
    }
    let max_price = *b.max_price.get_ref();
    if !max_price.is_finite() || max_price <= 0.0 {
        return Err(at(
            Some(b.max_price.span()),
            format!("max_price must be a positive number of USD per hour, not {max_price}"),
        ));
    }
    let zones = validate_zones(b.zones, at)?;
    let market = match b.market {
        None => Market::Spot,
        Some(m) => match m.get_ref().as_str() {
            "spot" => Market::Spot,
            "on-demand" => Market::OnDemand,
            other => {
                return Err(at(
                    Some(m.span()),
                    format!("market {other:?} is neither \"spot\" nor \"on-demand\""),
                ));
            }
        },
    };
    let user_data = validate_user_data(b.user_data, b.user_data_file, base, at)?;
    let tags = validate_tags(b.tags, at)?;
    let ready = match b.ready {
        None => ReadyCheck::Tcp {
            host: None,
            port: 22,
            timeout: DEFAULT_READY_TIMEOUT,
        },
        Some(r) => {
            let span = r.span();
            let timeout = |t: Option<String>| -> Result<Duration, ConfigError> {
                match t {
                    None => Ok(DEFAULT_READY_TIMEOUT),
                    Some(t) => {
                        let d = humantime::parse_duration(&t).map_err(|e| {
                            at(
                                Some(span.clone()),
                                format!(
                                    "ready.timeout {t:?} is not a duration like \"10m\" or \"90s\": {e}"
                                ),
                            )
                        })?;
                        if d > MAX_READY_TIMEOUT {
                            return Err(at(
                                Some(span.clone()),
                                format!(
                                    "ready.timeout {t:?} is over the limit of {}",
                                    humantime::format_duration(MAX_READY_TIMEOUT)
                                ),
                            ));
                        }
                        Ok(d)
                    }
                }
            };
            match r.into_inner() {
                RawReady::None {} => ReadyCheck::None,
                RawReady::Tcp {
                    port,
                    host,
                    timeout: t,
                } => {
                    if port == 0 {
                        return Err(at(Some(span), "ready.port must be 1-65535".into()));
                    }
                    ReadyCheck::Tcp {
                        host,
                        port,
                        timeout: timeout(t)?,
                    }
                }
                RawReady::Command {
                    command,
                    timeout: t,
                } => {
                    if command.trim().is_empty() {
                        return Err(at(Some(span), "ready.command is empty".into()));
                    }
                    ReadyCheck::Command {
                        command,
                        timeout: timeout(t)?,
                    }
                }
            }
        }
    };
    let root_disk = validate_root_disk(b.root_disk, at)?;
    let ssh = match b.ssh {
        None => SshSettings::default(),
        Some(raw) => {
            let span = raw.span();
            let r = raw.into_inner();
            let bad = |m: String| at(Some(span.clone()), format!("ssh: {m}"));
            for (what, v) in [
                ("user", Some(&r.user)),
                ("host", r.host.as_ref()),
                ("jump", r.jump.as_ref()),
            ] {
                if let Some(v) = v
                    && (v.is_empty() || v.starts_with('-') || v.chars().any(char::is_whitespace))
                {
                    return Err(bad(format!("{what} {v:?} is not a valid name")));
                }
            }
            if r.port == 0 {
                return Err(bad("port must be 1-65535".into()));
            }
            let connect_timeout = match r.connect_timeout {
                None => SshSettings::default().connect_timeout,
                Some(t) => humantime::parse_duration(&t)
                    .map_err(|e| bad(format!("connect_timeout {t:?}: {e}")))?,
            };
            SshSettings {
                user: r.user,
                key_file: r.key_file.map(|k| expand_path(&k, base)),
                port: r.port,
                host: r.host,
                jump: r.jump,
                known_hosts: r.known_hosts.map(|k| expand_path(&k, base)),
                connect_timeout,
                options: Vec::new(),
            }
        }
    };
    let volume =
        |raw: Option<Spanned<RawVolume>>, what: &str| -> Result<Option<VolumeSpec>, ConfigError> {
            let Some(raw) = raw else { return Ok(None) };
            let span = raw.span();
            let v = raw.into_inner();
            let bad = |m: String| at(Some(span.clone()), format!("{what}: {m}"));
            if v.name.trim().is_empty() || v.name.len() > 128 {
                return Err(bad("name must be 1-128 characters".into()));
            }
            if let Some(size) = v.size_gb
                && !(1..=65536).contains(&size)
            {
                return Err(bad(format!("size_gb must be 1-65536, not {size}")));
            }
            if !["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"].contains(&v.kind.as_str()) {
                return Err(bad(format!("type {:?} is not an EBS volume type", v.kind)));
            }
            let mount = match (what, v.mount) {
                ("root_volume", Some(_)) => {
                    return Err(bad("mount does not apply: the root volume becomes /".into()));
                }
                (_, Some(m))
                    if !m.starts_with('/')
                        || m == "/"
                        || m.contains(char::is_whitespace)
                        || m.contains(['\'', '"', '$', '`', '\\']) =>
                {
                    return Err(bad(format!(
                        "mount {m:?} must be an absolute path other than / without quotes or spaces"
                    )));
                }
                (_, Some(m)) => m,
                (_, None) => "/data".into(),
            };
            if what == "data_volume" && v.size_gb.is_none() {
                return Err(bad("size_gb is required (the size of a new volume)".into()));
            }
            let on_stop = match v.on_stop.as_deref() {
                None | Some("retain") => OnStop::Retain,
                Some("snapshot") => OnStop::Snapshot,
                Some("delete") => OnStop::Delete,
                Some(other) => {
                    return Err(bad(format!(
                        "on_stop {other:?} is not retain, snapshot or delete"
                    )));
                }
            };
            let keep = match (v.keep, on_stop) {
                (None, _) => DEFAULT_STOP_SNAPSHOTS,
                (Some(k), OnStop::Snapshot) if (1..=100).contains(&k) => k as usize,
                (Some(k), OnStop::Snapshot) => {
                    return Err(bad(format!("keep must be 1-100 snapshots, not {k}")));
                }
                (Some(_), _) => {
                    return Err(bad(
                        "keep applies to on_stop = \"snapshot\" (how many stop snapshots to keep)"
                            .into(),
                    ));
                }
            };
            Ok(Some(VolumeSpec {
                name: v.name,
                size_gb: v.size_gb,
                kind: v.kind,
                mount,
                on_stop,
                adopt: v.adopt.unwrap_or(false),
                keep,
            }))
        };
    let data_volume = volume(b.data_volume, "data_volume")?;
    let root_span = b.root_volume.as_ref().map(|r| r.span());
    let root_volume = volume(b.root_volume, "root_volume")?;
    if let (Some(d), Some(r)) = (&data_volume, &root_volume)
        && d.name == r.name
    {
        return Err(at(
            root_span,
            format!(
                "root_volume and data_volume are both named {:?}; one volume cannot be both",
                d.name
            ),
        ));
    }
    let dns = match b.dns {
        None => None,
        Some(raw) => {
            let span = raw.span();
            let d = raw.into_inner();
            let bad = |m: String| at(Some(span.clone()), format!("dns: {m}"));
            let valid_name = |n: &str| {
                let n = n.trim_end_matches('.');
                !n.is_empty()
                    && n.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && l.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
                    })
            };
            if !valid_name(&d.zone) || !valid_name(&d.name) {
                return Err(bad(format!(
                    "{:?} / {:?} are not DNS names",
                    d.zone, d.name
                )));
            }
            let (zone, name) = (
                spotkeeper_cloud::fqdn(&d.zone),
                spotkeeper_cloud::fqdn(&d.name),
            );
            if name != zone && !name.ends_with(&format!(".{zone}")) {
                return Err(bad(format!("name {name} is not inside zone {zone}")));
            }
            if !(0..=604_800).contains(&d.ttl) {
                return Err(bad(format!("ttl {} is not 0-604800 seconds", d.ttl)));
            }
            let address = match d.address.as_deref() {
                None | Some("public") => DnsAddress::Public,
                Some("private") => DnsAddress::Private,
                Some("both") => DnsAddress::Both,
                Some(other) => {
                    return Err(bad(format!(
                        "address {other:?} is not \"public\", \"private\" or \"both\""
                    )));
                }
            };
            if address == DnsAddress::Both && (d.private || d.zone_id.is_some()) {
                return Err(bad(
                    "address = \"both\" writes the public and the private zone of the name; \
                     private and zone_id do not apply"
                        .into(),
                ));
            }
            if let Some(id) = &d.zone_id {
                let id = id.trim_start_matches("/hostedzone/");
                if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(bad(format!(
                        "zone_id {id:?} is not a Route53 hosted zone id"
                    )));
                }
                if d.private {
                    return Err(bad(
                        "set private or zone_id, not both (the id already says which zone)".into(),
                    ));
                }
            }
            Some(DnsSpec {
                zone,
                name,
                ttl: d.ttl,
                address,
                adopt: d.adopt,
                private: d.private,
                zone_id: d
                    .zone_id
                    .map(|z| z.trim_start_matches("/hostedzone/").to_owned()),
            })
        }
    };
    let elastic_ip = match b.elastic_ip {
        Some(e) if !e.get_ref().starts_with("eipalloc-") => {
            return Err(at(
                Some(e.span()),
                format!(
                    "elastic_ip {:?} is not an allocation id (eipalloc-…)",
                    e.get_ref()
                ),
            ));
        }
        other => other.map(Spanned::into_inner),
    };
    let images = match b.images {
        None => ImagePolicy::default(),
        Some(raw) => {
            let span = raw.span();
            let i = raw.into_inner();
            if i.keep == Some(0) {
                return Err(at(Some(span), "images.keep must be at least 1".into()));
            }
            let every = match i.every {
                None => None,
                Some(t) => {
                    let d = humantime::parse_duration(&t)
                        .map_err(|e| at(Some(span.clone()), format!("images.every {t:?}: {e}")))?;
                    if d < Duration::from_secs(3600) {
                        return Err(at(
                            Some(span),
                            format!(
                                "images.every {t:?} is under an hour; images take minutes and cost storage"
                            ),
                        ));
                    }
                    Some(d)
                }
            };
            ImagePolicy {
                keep: i.keep,
                every,
            }
        }
    };
    let fallback_on_demand = validate_fallback(b.fallback.as_ref(), at)?;
    let price_cap = match &b.price_cap {
        None => PriceCap::Spotkeeper,
        Some(c) => match c.get_ref().as_str() {
            "spotkeeper" => PriceCap::Spotkeeper,
            "aws" => PriceCap::Aws,
            other => {
                return Err(at(
                    Some(c.span()),
                    format!("price_cap {other:?} is neither \"spotkeeper\" nor \"aws\""),
                ));
            }
        },
    };
    let replace_on_rebalance = match &b.on_rebalance {
        None => false,
        Some(r) => match r.get_ref().as_str() {
            "ignore" => false,
            "replace" => true,
            other => {
                return Err(at(
                    Some(r.span()),
                    format!("on_rebalance {other:?} is neither \"ignore\" nor \"replace\""),
                ));
            }
        },
    };
    Ok(BoxSpec {
        name: name.to_owned(),
        image,
        instance_types,
        max_price,
        zones,
        market,
        key_name: b.key_name,
        security_groups: b.security_groups,
        subnet: b.subnet,
        user_data,
        tags,
        ready,
        root_disk,
        iam_instance_profile: b.iam_instance_profile,
        ssh,
        data_volume,
        root_volume,
        move_volume: b.move_volume,
        dns,
        keep_dns: b.keep_dns,
        elastic_ip,
        adopt_elastic_ip: b.adopt_elastic_ip.unwrap_or(false),
        image_from_box,
        images,
        replace_on_rebalance,
        fallback_on_demand,
        price_cap,
    })
}

// Launch keys shared by boxes and pools (`[pool.NAME]` validates them too).

pub(crate) fn validate_zones(
    zones: Option<Spanned<Vec<String>>>,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<Option<Vec<String>>, ConfigError> {
    Ok(match zones {
        Some(z) if z.get_ref().is_empty() => {
            return Err(at(
                Some(z.span()),
                "zones is empty: list zones or leave the key out for every zone".into(),
            ));
        }
        Some(z) => Some(z.into_inner()),
        None => None,
    })
}

pub(crate) fn validate_user_data(
    user_data: Option<Spanned<String>>,
    user_data_file: Option<Spanned<String>>,
    base: &Path,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<Option<String>, ConfigError> {
    let user_data = match (user_data, user_data_file) {
        (Some(_), Some(f)) => {
            return Err(at(
                Some(f.span()),
                "set user_data or user_data_file, not both".into(),
            ));
        }
        (Some(d), None) => Some(d.into_inner()),
        (None, Some(f)) => {
            let file = base.join(f.get_ref());
            let data = std::fs::read_to_string(&file).map_err(|e| {
                at(
                    Some(f.span()),
                    format!("user_data_file {}: {e}", file.display()),
                )
            })?;
            Some(data)
        }
        (None, None) => None,
    };
    // EC2 limit: 16 KiB of user data before base64.
    if let Some(d) = &user_data
        && d.len() > 16 * 1024
    {
        return Err(at(
            None,
            format!("user data is {} bytes; EC2 accepts at most 16384", d.len()),
        ));
    }
    Ok(user_data)
}

pub(crate) fn validate_tags(
    raw: BTreeMap<Spanned<String>, String>,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut tags = BTreeMap::new();
    for (k, v) in raw {
        let key = k.get_ref();
        if key.starts_with("spotkeeper:") || key.starts_with("aws:") || key == "Name" {
            return Err(at(
                Some(k.span()),
                format!(
                    "tag {key:?} is reserved (spotkeeper sets Name and spotkeeper:* itself; aws:* is AWS's)"
                ),
            ));
        }
        if key.is_empty() || key.len() > 128 || v.len() > 256 {
            return Err(at(
                Some(k.span()),
                format!("tag {key:?}: keys are 1-128 characters, values at most 256"),
            ));
        }
        tags.insert(k.into_inner(), v);
    }
    Ok(tags)
}

pub(crate) fn validate_root_disk(
    root_disk: Option<Spanned<RawDisk>>,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<Option<RootVolume>, ConfigError> {
    Ok(match root_disk {
        None => None,
        Some(d) => {
            let span = d.span();
            let d = d.into_inner();
            if !(1..=65536).contains(&d.size_gb) {
                return Err(at(
                    Some(span),
                    format!("root_disk.size_gb must be 1-65536, not {}", d.size_gb),
                ));
            }
            if !["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"].contains(&d.kind.as_str()) {
                return Err(at(
                    Some(span),
                    format!(
                        "root_disk.type {:?} is not an EBS volume type (gp3, gp2, io2 …)",
                        d.kind
                    ),
                ));
            }
            Some(RootVolume {
                size_gb: d.size_gb,
                kind: d.kind,
            })
        }
    })
}

pub(crate) fn validate_fallback(
    fallback: Option<&Spanned<String>>,
    at: &dyn Fn(Option<Range<usize>>, String) -> ConfigError,
) -> Result<bool, ConfigError> {
    Ok(match fallback {
        None => false,
        Some(f) => match f.get_ref().as_str() {
            "none" => false,
            "on-demand" => true,
            other => {
                return Err(at(
                    Some(f.span()),
                    format!("fallback {other:?} is neither \"on-demand\" nor \"none\""),
                ));
            }
        },
    })
}

/// `~/x` is under the home directory; a relative path is relative to the config file.
fn expand_path(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    base.join(p)
}

/// Validates a box registered through the API: a JSON object with the keys
/// of a `[box.NAME]` table (not `user_data_file`: the server's files are not
/// the client's to read). Errors name the field.
pub fn parse_box_json(name: &str, value: &serde_json::Value) -> Result<BoxSpec, String> {
    let config = parse_json_section("box", name, value)?;
    config
        .boxes
        .get(name)
        .cloned()
        .ok_or_else(|| "the box did not parse".to_owned())
}

/// Validates a pool registered through the API, as [`parse_box_json`] a box.
pub fn parse_pool_json(
    name: &str,
    value: &serde_json::Value,
) -> Result<crate::pools::PoolSpec, String> {
    let config = parse_json_section("pool", name, value)?;
    config
        .pools
        .get(name)
        .cloned()
        .ok_or_else(|| "the pool did not parse".to_owned())
}

/// Parses `value` as the table `[SECTION.NAME]` of an otherwise empty config.
fn parse_json_section(
    section: &str,
    name: &str,
    value: &serde_json::Value,
) -> Result<Config, String> {
    check_name(name).map_err(|m| format!("name: {m}"))?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("the {section} must be a JSON object"))?;
    if object.contains_key("user_data_file") {
        return Err("user_data_file is not accepted through the API; send user_data".into());
    }
    if let Some((key, _)) = object.iter().find(|(_, v)| v.is_null()) {
        return Err(format!("{key}: null is not a value; leave the key out"));
    }
    let table = toml::Value::try_from(value).map_err(|e| format!("unrepresentable value: {e}"))?;
    let mut entries = toml::map::Map::new();
    entries.insert(name.to_owned(), table);
    let mut root = toml::map::Map::new();
    root.insert(section.into(), toml::Value::Table(entries));
    let text = toml::to_string(&toml::Value::Table(root))
        .map_err(|e| format!("unrepresentable value: {e}"))?;
    parse(Path::new("request"), &text).map_err(|e| e.message)
}

/// Names (owner, box) end up in tags, lock file names and client tokens.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 40 {
        return Err(format!("{name:?} must be 1 to 40 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

pub(crate) fn is_instance_type(s: &str) -> bool {
    match s.split_once('.') {
        Some((family, size)) => {
            let ok =
                |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            ok(family) && ok(size)
        }
        None => false,
    }
}

/// The key of a `key = value` line when `offset` points into the value, so
/// serde's "invalid type: string, expected f64" can say which key it means.
fn key_before(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let (key, _) = text[line_start..offset].split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(['[', '{', ','])).then(|| key.to_owned())
}

fn locate_error(
    path: &Path,
    text: &str,
    span: Option<Range<usize>>,
    message: String,
) -> ConfigError {
    let (line, column) = match span {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    ConfigError {
        file: path.to_path_buf(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[aws]
region = "us-east-1"

[box.dev]
image = "ami-0123456789abcdef0"
instance_types = ["t3.micro", "t3a.micro"]
max_price = 0.02
zones = ["us-east-1a", "us-east-1b"]
tags = { team = "ml" }
ready = { check = "tcp", port = 22, timeout = "10m" }
"#;

    fn err(text: &str) -> ConfigError {
        parse(Path::new("/cfg/spotkeeper.toml"), text).expect_err("config should be rejected")
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(Path::new("x.toml"), GOOD).expect("valid");
        let b = c.box_spec("dev").expect("box");
        assert_eq!(b.instance_types, ["t3.micro", "t3a.micro"]);
        assert_eq!(b.max_price, 0.02);
        assert_eq!(b.market, Market::Spot);
        assert_eq!(c.owner, DEFAULT_OWNER);
        assert_eq!(
            b.ready,
            ReadyCheck::Tcp {
                host: None,
                port: 22,
                timeout: Duration::from_secs(600)
            }
        );
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let e = err(&GOOD.replace("max_price = 0.02", "max_price = 0.02\nmax_prize = 1"));
        assert_eq!((e.line, e.column), (Some(9), Some(1)), "{e}");
        assert!(e.message.contains("max_prize"), "{e}");
    }

    #[test]
    fn negative_price_points_at_the_value() {
        let e = err(&GOOD.replace("0.02", "-1.0"));
        assert_eq!((e.line, e.column), (Some(8), Some(13)), "{e}");
        assert!(
            e.to_string()
                .starts_with("/cfg/spotkeeper.toml:8:13: box \"dev\": max_price"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_reported() {
        let e = err(&GOOD.replace("max_price = 0.02", "max_price = \"cheap\""));
        assert_eq!(e.line, Some(8), "{e}");
    }

    #[test]
    fn empty_instance_types_is_rejected() {
        let e = err(&GOOD.replace(r#"["t3.micro", "t3a.micro"]"#, "[]"));
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("instance_types is empty"), "{e}");
    }

    #[test]
    fn missing_user_data_file_is_rejected_at_its_key() {
        let e = err(&GOOD.replace("tags =", "user_data_file = \"nope.sh\"\ntags ="));
        assert_eq!(e.line, Some(10), "{e}");
        assert!(e.message.contains("/cfg/nope.sh"), "{e}");
    }

    #[test]
    fn user_data_file_is_read_relative_to_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("boot.sh"), "#!/bin/sh\necho hi\n").expect("write");
        let text = GOOD.replace("tags =", "user_data_file = \"boot.sh\"\ntags =");
        let c = parse(&dir.path().join("spotkeeper.toml"), &text).expect("valid");
        assert_eq!(
            c.boxes["dev"].user_data.as_deref(),
            Some("#!/bin/sh\necho hi\n")
        );
    }

    #[test]
    fn unknown_box_lists_the_known_ones() {
        let c = parse(Path::new("x.toml"), GOOD).expect("valid");
        let e = c.box_spec("prod").expect_err("no such box");
        assert!(e.message.contains("defines: dev"), "{e}");
    }

    #[test]
    fn bad_ready_check_and_timeout_are_rejected() {
        assert!(err(&GOOD.replace("check = \"tcp\"", "check = \"ping\"")).line == Some(11));
        assert!(
            err(&GOOD.replace("\"10m\"", "\"soon\""))
                .message
                .contains("not a duration")
        );
    }

    #[test]
    fn reserved_tags_and_bad_images_are_rejected() {
        assert!(
            err(&GOOD.replace("team = ", "\"spotkeeper:box\" = "))
                .message
                .contains("reserved")
        );
        assert!(
            err(&GOOD.replace("ami-0123456789abcdef0", "ubuntu"))
                .message
                .contains("neither an AMI id")
        );
    }

    #[test]
    fn image_aliases_ssh_and_root_disk_parse() {
        let text = GOOD
            .replace("ami-0123456789abcdef0", "ubuntu:24.04:arm64")
            .replace("tags =", "ssh = { user = \"ubuntu\", key_file = \"keys/id\", port = 2222, host = \"203.0.113.7\", jump = \"bastion\" }\nroot_disk = { size_gb = 30 }\ntags =");
        let c = parse(Path::new("/etc/sk/x.toml"), &text).expect("valid");
        let b = &c.boxes["dev"];
        assert_eq!(
            b.image,
            ImageRef::Ubuntu {
                release: "24.04".into(),
                arch: spotkeeper_cloud::Arch::Arm64
            }
        );
        assert_eq!(b.ssh.user, "ubuntu");
        assert_eq!(
            b.ssh.key_file.as_deref(),
            Some(Path::new("/etc/sk/keys/id"))
        );
        assert_eq!(
            (b.ssh.port, b.ssh.host.as_deref(), b.ssh.jump.as_deref()),
            (2222, Some("203.0.113.7"), Some("bastion"))
        );
        assert_eq!(
            b.root_disk,
            Some(RootVolume {
                size_gb: 30,
                kind: "gp3".into()
            })
        );
        let e = err(&GOOD.replace("tags =", "ssh = { port = 22 }\ntags ="));
        assert!(e.message.contains("user"), "{e}");
        let e = err(&GOOD.replace("tags =", "ssh = { user = \"-oProxyCommand=x\" }\ntags ="));
        assert!(e.message.contains("not a valid name"), "{e}");
        assert!(
            err(&GOOD.replace("ami-0123456789abcdef0", "ubuntu:warty"))
                .message
                .contains("24.04")
        );
        // A codename is its release.
        let c = parse(
            Path::new("x.toml"),
            &GOOD.replace("ami-0123456789abcdef0", "ubuntu:noble"),
        )
        .expect("valid");
        assert_eq!(c.boxes["dev"].image.to_string(), "ubuntu:24.04");
    }

    #[test]
    fn persistence_keys_parse_and_validate() {
        let text = GOOD.replace(
            "tags =",
            "data_volume = { name = \"dev-data\", size_gb = 50, mount = \"/data\", on_stop = \"snapshot\" }\n\
             root_volume = { name = \"dev-root\" }\nmove_volume = true\n\
             dns = { zone = \"example.com\", name = \"dev.example.com\", ttl = 30, address = \"private\" }\n\
             elastic_ip = \"eipalloc-0abc\"\nimages = { keep = 3, every = \"24h\" }\ntags =",
        );
        let c = parse(Path::new("x.toml"), &text).expect("valid");
        let b = &c.boxes["dev"];
        let d = b.data_volume.as_ref().expect("data");
        assert_eq!(
            (
                d.name.as_str(),
                d.size_gb,
                d.kind.as_str(),
                d.mount.as_str(),
                d.on_stop
            ),
            ("dev-data", Some(50), "gp3", "/data", OnStop::Snapshot)
        );
        assert_eq!(d.keep, DEFAULT_STOP_SNAPSHOTS);
        assert_eq!(
            b.root_volume.as_ref().map(|r| (r.name.as_str(), r.on_stop)),
            Some(("dev-root", OnStop::Retain))
        );
        assert!(b.move_volume);
        let dns = b.dns.as_ref().expect("dns");
        assert_eq!(
            (dns.zone.as_str(), dns.name.as_str(), dns.ttl, dns.address),
            ("example.com.", "dev.example.com.", 30, DnsAddress::Private)
        );
        assert_eq!(
            b.images,
            ImagePolicy {
                keep: Some(3),
                every: Some(Duration::from_secs(86_400))
            }
        );
    }

    #[test]
    fn persistence_mistakes_are_located() {
        let e = err(&GOOD.replace(
            "tags =",
            "data_volume = { name = \"v\", size_gb = 5 }\nroot_volume = { name = \"v\" }\ntags =",
        ));
        assert_eq!(e.line, Some(11), "{e}");
        assert!(e.message.contains("both named"), "{e}");
        assert!(
            err(&GOOD.replace(
                "tags =",
                "dns = { zone = \"example.com\", name = \"dev.other.org\" }\ntags ="
            ))
            .message
            .contains("not inside zone")
        );
        assert!(
            err(&GOOD.replace(
                "tags =",
                "data_volume = { name = \"v\", size_gb = 5, on_stop = \"shred\" }\ntags ="
            ))
            .message
            .contains("on_stop")
        );
        assert!(
            err(&GOOD.replace("tags =", "data_volume = { name = \"v\" }\ntags ="))
                .message
                .contains("size_gb is required")
        );
        for (keep, says) in [
            ("on_stop = \"snapshot\", keep = 0", "keep must be 1-100"),
            ("keep = 2", "keep applies to on_stop = \"snapshot\""),
        ] {
            let e = err(&GOOD.replace(
                "tags =",
                &format!("data_volume = {{ name = \"v\", size_gb = 5, {keep} }}\ntags ="),
            ));
            assert!(e.message.contains(says), "{e}");
        }
        assert!(
            err(&GOOD.replace(
                "tags =",
                "root_volume = { name = \"r\", mount = \"/x\" }\ntags ="
            ))
            .message
            .contains("mount does not apply")
        );
        assert!(
            err(&GOOD.replace("ami-0123456789abcdef0", "box:latest"))
                .message
                .contains("base_image")
        );
        assert!(
            err(&GOOD.replace("tags =", "images = { every = \"5m\" }\ntags ="))
                .message
                .contains("under an hour")
        );
        let latest = parse(
            Path::new("x.toml"),
            &GOOD.replace(
                "\"ami-0123456789abcdef0\"",
                "\"box:latest\"\nbase_image = \"al2023\"",
            ),
        )
        .expect("valid");
        assert!(latest.boxes["dev"].image_from_box);
        assert_eq!(
            latest.boxes["dev"].image,
            ImageRef::AmazonLinux2023 {
                arch: spotkeeper_cloud::Arch::Amd64
            }
        );
    }

    #[test]
    fn fallback_and_rebalance_policies_are_checked() {
        let c = parse(
            Path::new("x.toml"),
            &GOOD.replace(
                "tags =",
                "fallback = \"on-demand\"\non_rebalance = \"replace\"\ntags =",
            ),
        )
        .expect("valid");
        assert!(c.boxes["dev"].fallback_on_demand && c.boxes["dev"].replace_on_rebalance);
        assert!(
            err(&GOOD.replace("tags =", "fallback = \"reserved\"\ntags ="))
                .message
                .contains("fallback")
        );
        assert!(
            err(&GOOD.replace("tags =", "on_rebalance = \"panic\"\ntags ="))
                .message
                .contains("on_rebalance")
        );
        assert_eq!(c.boxes["dev"].price_cap, PriceCap::Spotkeeper);
        let capped = parse(
            Path::new("x.toml"),
            &GOOD.replace("tags =", "price_cap = \"aws\"\ntags ="),
        )
        .expect("valid");
        assert_eq!(capped.boxes["dev"].price_cap, PriceCap::Aws);
        let e = err(&GOOD.replace("tags =", "price_cap = \"bid\"\ntags ="));
        assert!(e.message.contains("price_cap \"bid\" is neither"), "{e}");
    }

    #[test]
    fn config_location_prefers_flag_then_env_then_default() {
        assert_eq!(
            locate(Some(Path::new("a.toml")), Some("b.toml")),
            PathBuf::from("a.toml")
        );
        assert_eq!(locate(None, Some("b.toml")), PathBuf::from("b.toml"));
        assert_eq!(locate(None, None), PathBuf::from(DEFAULT_FILE));
    }
}
