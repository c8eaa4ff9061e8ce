//! The config file: TOML read into [`raw`] structs that remember where each
//! value stands, then validated into [`Config`]. Every error names the file,
//! line and column; nothing is read from AWS or written anywhere until it is
//! valid.
//!
//! - `raw`: the file as written (serde, spans); `keywords`: its keyword enums;
//! - `error`: [`ConfigError`] and locating a span;
//! - `launch`: the launch keys boxes and pools share, and their validators;
//! - `box_spec`: `[box.NAME]` → [`BoxSpec`];
//! - `pool_spec`: `[pool.NAME]` → [`PoolSpec`];
//! - `sinks`: `[[notify]]` → [`Sink`](sinks::Sink);
//! - `api`: JSON bodies of the HTTP API → specs, and what the API refuses;
//! - this module: the top-level tables (`owner`, `[aws]`, `[daemon]`,
//!   `[api]`, `[cost]`) and [`parse`].
//!
//! The config depends on nothing else of the engine: every other module may
//! read it.

pub mod api;
mod box_spec;
mod database;
pub mod demand_hosts;
mod error;
mod interruption;
mod keywords;
mod launch;
mod pool_spec;
mod raw;
pub mod sinks;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

pub use api::{parse_box_json, parse_pool_json, refuse_code};
pub use box_spec::{
    BoxSpec, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_SNAPSHOTS, DnsAddress, DnsSpec, ImagePolicy,
    MAX_READY_TIMEOUT, OnStop, PriceCap, ReadyCheck, VolumeSpec,
};
pub use database::DatabaseUrl;
pub use demand_hosts::DemandHost;
pub use error::ConfigError;
pub use interruption::{DEFAULT_HOOK_TIMEOUT, MAX_HOOK_TIMEOUT, OnInterruption};
pub use launch::LaunchTemplate;
pub use pool_spec::{
    DEFAULT_DEMAND_TIMEOUT, DEFAULT_SCALE_DOWN_AFTER, Demand, MAX_CAPACITY_LIMIT,
    MAX_DEMAND_TIMEOUT, PoolSpec, PoolType,
};

use error::{At, duration, duration_within, key_before, locate_error};
use keywords::RetryMode;
use launch::{check_name, is_instance_type};
use raw::{RawApi, RawAws, RawConfig, RawCost, RawDaemon};

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

/// The event queue every installation shared before its name was derived
/// from the owner; an installation set up then keeps reading it (see
/// [`default_queue`]).
pub const LEGACY_QUEUE: &str = "spotkeeper-events";

/// The event queue's name when `[daemon] queue` is not set: one per
/// installation. An SQS queue name belongs to the whole account and region,
/// so two installations on one name would rewrite each other's policy,
/// delete each other's events and remove the queue the other reads.
/// (`.` is not allowed in a queue name; owners may hold one.)
pub fn default_queue(owner: &str) -> String {
    format!("spotkeeper-{}-events", owner.replace('.', "_"))
}

/// Owner tag value when the config does not set `owner`.
pub const DEFAULT_OWNER: &str = "spotkeeper";

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// What the config wants (its `[box.*]` and `[pool.*]` tables, as
    /// written), as a SHA-256 hex fingerprint: two daemons whose files differ
    /// only in machine settings (`[api] listen`, the database) run the same
    /// config. See [`desired_fingerprint`].
    pub fingerprint: String,
    /// When the file was last written (its modification time; `None` when
    /// it cannot be read): a config written later than the newest one the
    /// daemons recorded is newer even if its content was seen before.
    pub written_at: Option<std::time::SystemTime>,
    /// Value of the `spotkeeper:owner` tag on everything this config creates.
    pub owner: String,
    /// Where AWS is.
    pub aws: AwsSettings,
    /// State file from `[daemon] state`, if set.
    pub state: Option<PathBuf>,
    /// The shared PostgreSQL database from `[daemon] database`, if set
    /// (`$SPOTKEEPER_DATABASE_URL` overrides it; the CLI reads that).
    pub database: Option<DatabaseUrl>,
    /// How long a daemon's lease on a box or pool lasts unless renewed
    /// (`[daemon] lease`): a dead daemon's boxes are taken over after it.
    pub lease: Duration,
    /// The SQS queue `setup` creates for EC2 events (`[daemon] queue`, else
    /// [`default_queue`] of the owner).
    pub queue: String,
    /// Whether `[daemon] queue` names the queue (else it is the default,
    /// and an installation still on [`LEGACY_QUEUE`] keeps reading that).
    pub queue_named: bool,
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
    /// `[api] demand_hosts`: where a pool registered through the API may
    /// ask for its demand (none by default).
    pub api_demand_hosts: Vec<DemandHost>,
    /// The API token from `[api] token`, if set there.
    pub api_token: Option<Secret>,
    /// The boxes, by name.
    pub boxes: BTreeMap<String, BoxSpec>,
    /// The worker pools, by name.
    pub pools: BTreeMap<String, PoolSpec>,
    /// `[[notify]]` sinks told about events.
    pub notify: Vec<sinks::Sink>,
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

/// `[aws]`: region, profile, endpoint, timeouts and retries; never
/// credentials. It is the cloud crate's client configuration as is.
pub type AwsSettings = spotkeeper_cloud::ClientConfig;

/// The longest `[daemon] interval`: an hour between passes that look again
/// at what no event announced.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The longest `[daemon] lease`: a dead daemon's boxes are taken over after
/// it (a lease is at least twice the interval, so twice the longest one).
pub const MAX_LEASE: Duration = Duration::from_secs(2 * 3600);

/// The longest `[daemon] retention`: ten years of history (humantime's
/// years of 365.25 days, so it reads "10years").
pub const MAX_RETENTION: Duration = Duration::from_secs(315_576_000);

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
    let base = path.parent().unwrap_or(Path::new("."));
    one_box_per_volume(&raw.boxes, &at)?;
    let daemon = DaemonSettings::validate(raw.daemon, &at)?;
    let api = ApiSettings::validate(raw.api, &at)?;
    let boxes = named(raw.boxes, "box", &at, |name, b| {
        box_spec::validate_box(name, b, base, &at)
    })?;
    if let Some(name) = raw.pools.keys().find(|p| boxes.contains_key(p.get_ref())) {
        return Err(at(
            Some(name.span()),
            format!(
                "pool {:?} has the name of a box; give it another one",
                name.get_ref()
            ),
        ));
    }
    let pools = named(raw.pools, "pool", &at, |name, p| {
        pool_spec::validate_pool(name, p, base, &at)
    })?;
    Ok(Config {
        path: path.to_path_buf(),
        fingerprint: desired_fingerprint(text),
        written_at: std::fs::metadata(path).and_then(|m| m.modified()).ok(),
        aws: aws_settings(raw.aws, &at)?,
        state: daemon.state,
        database: daemon.database,
        lease: daemon
            .lease
            .unwrap_or_else(|| default_lease(daemon.interval)),
        queue_named: daemon.queue.is_some(),
        queue: daemon.queue.unwrap_or_else(|| default_queue(&owner)),
        interval: daemon.interval,
        max_tasks: daemon.max_tasks,
        retention: daemon.retention,
        api_listen: api.listen,
        api_token: api.token,
        api_allow_commands: api.allow_commands,
        api_instance_profiles: api.instance_profiles,
        api_demand_hosts: api.demand_hosts,
        boxes,
        pools,
        notify: sinks::validate(raw.notify, &at)?,
        on_demand_prices: on_demand_prices(raw.cost, &at)?,
        owner,
    })
}

/// The fingerprint of a config file's desired part: SHA-256 of its `box`
/// and `pool` tables as canonical JSON (keys sorted), so formatting,
/// comments and key order do not count, and machine settings do not either.
/// Called on a file that parsed.
pub fn desired_fingerprint(text: &str) -> String {
    use sha2::Digest as _;
    let table: toml::Table = toml::from_str(text).unwrap_or_default();
    let mut canonical = String::new();
    for key in ["box", "pool"] {
        canonical.push_str(key);
        canonical.push('=');
        if let Some(v) = table.get(key) {
            canonical_json(&serde_json::to_value(v).unwrap_or_default(), &mut canonical);
        }
        canonical.push('\n');
    }
    let digest = sha2::Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `value` as JSON with every object's keys sorted (whatever order the
/// maps keep).
fn canonical_json(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(v, out);
            }
            out.push(']');
        }
        v => out.push_str(&v.to_string()),
    }
}

/// A volume belongs to one box: two boxes naming one volume would take it
/// from each other (the second detaches it from the first's running
/// instance). Reported at the second naming.
fn one_box_per_volume(
    boxes: &BTreeMap<Spanned<String>, raw::RawBox>,
    at: At,
) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for (name, b) in boxes {
        for (key, v) in [
            ("data_volume", &b.data_volume),
            ("root_volume", &b.root_volume),
        ] {
            let Some(v) = v else { continue };
            match seen.get(v.get_ref().name.as_str()) {
                Some((other, other_key)) if *other != name.get_ref().as_str() => {
                    return Err(at(
                        Some(v.span()),
                        format!(
                            "box {:?}: {key} {:?} is box {other:?}'s {other_key} already; \
                             a volume belongs to one box (name another one)",
                            name.get_ref(),
                            v.get_ref().name
                        ),
                    ));
                }
                _ => {
                    seen.insert(&v.get_ref().name, (name.get_ref(), key));
                }
            }
        }
    }
    Ok(())
}

/// `[box.NAME]` or `[pool.NAME]` tables validated by `validate`, each name
/// checked; errors say which table.
fn named<R, S>(
    tables: BTreeMap<Spanned<String>, R>,
    section: &str,
    at: At,
    validate: impl Fn(&str, R) -> Result<S, ConfigError>,
) -> Result<BTreeMap<String, S>, ConfigError> {
    let mut specs = BTreeMap::new();
    for (name, table) in tables {
        let spec = validate(name.get_ref(), table).map_err(|e| ConfigError {
            message: format!("{section} {:?}: {}", name.get_ref(), e.message),
            ..e
        })?;
        check_name(name.get_ref())
            .map_err(|m| at(Some(name.span()), format!("{section} name: {m}")))?;
        specs.insert(name.into_inner(), spec);
    }
    Ok(specs)
}

/// `[aws]`.
fn aws_settings(raw: RawAws, at: At) -> Result<AwsSettings, ConfigError> {
    if let Some(region) = &raw.region
        && region.get_ref().trim().is_empty()
    {
        return Err(at(Some(region.span()), "aws.region is empty".into()));
    }
    if let Some(url) = &raw.endpoint_url {
        let u = url.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(at(
                Some(url.span()),
                format!("aws.endpoint_url {u:?} is not an http(s) URL"),
            ));
        }
    }
    let max_attempts = match &raw.max_attempts {
        None => None,
        Some(n) => {
            Some(in_range(n, "aws.max_attempts", 1, i64::from(MAX_AWS_ATTEMPTS), at)? as u32)
        }
    };
    Ok(AwsSettings {
        region: raw.region.map(Spanned::into_inner),
        profile: raw.profile,
        endpoint_url: raw.endpoint_url.map(Spanned::into_inner),
        operation_timeout: aws_timeout(raw.operation_timeout.as_ref(), "operation_timeout", at)?,
        attempt_timeout: aws_timeout(raw.attempt_timeout.as_ref(), "attempt_timeout", at)?,
        max_attempts,
        adaptive_retry: raw.retry_mode == Some(RetryMode::Adaptive),
    })
}

/// `aws.operation_timeout` / `aws.attempt_timeout`: 100 ms to [`MAX_AWS_TIMEOUT`].
fn aws_timeout(
    t: Option<&Spanned<String>>,
    key: &str,
    at: At,
) -> Result<Option<Duration>, ConfigError> {
    let Some(t) = t else { return Ok(None) };
    let d = duration(t, &format!("aws.{key}"), at)?;
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
}

/// A whole number at `key` from `least` to `most`.
fn in_range(
    n: &Spanned<i64>,
    key: &str,
    least: i64,
    most: i64,
    at: At,
) -> Result<i64, ConfigError> {
    let v = *n.get_ref();
    if (least..=most).contains(&v) {
        Ok(v)
    } else {
        Err(at(
            Some(n.span()),
            format!("{key} must be from {least} to {most}, not {v}"),
        ))
    }
}

/// The lease when `[daemon] lease` is not set: three passes, so one slow
/// or failed pass does not hand a box to another daemon.
pub fn default_lease(interval: Duration) -> Duration {
    (interval * 3).max(Duration::from_secs(10))
}

/// `[daemon]`, validated.
struct DaemonSettings {
    state: Option<PathBuf>,
    database: Option<DatabaseUrl>,
    lease: Option<Duration>,
    queue: Option<String>,
    interval: Duration,
    max_tasks: usize,
    retention: Duration,
}

impl DaemonSettings {
    fn validate(raw: Option<RawDaemon>, at: At) -> Result<Self, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Self {
                state: None,
                database: None,
                lease: None,
                queue: None,
                interval: DEFAULT_INTERVAL,
                max_tasks: DEFAULT_MAX_TASKS,
                retention: DEFAULT_RETENTION,
            });
        };
        let queue = raw.queue.as_ref().map(|q| queue_name(q, at)).transpose()?;
        let interval = duration_within(
            raw.interval.as_ref(),
            "daemon.interval",
            (Duration::from_secs(1), MAX_INTERVAL),
            "",
            at,
        )?;
        let retention = duration_within(
            raw.retention.as_ref(),
            "daemon.retention",
            (Duration::from_secs(3600), MAX_RETENTION),
            " (events are redelivered for minutes)",
            at,
        )?;
        let max_tasks = match &raw.max_tasks {
            None => DEFAULT_MAX_TASKS,
            Some(n) => in_range(n, "daemon.max_tasks", 1, 10_000, at)? as usize,
        };
        let database = match &raw.database {
            None => None,
            Some(d) => Some(
                DatabaseUrl::parse(d.get_ref())
                    .map_err(|m| at(Some(d.span()), format!("daemon.database: {m}")))?,
            ),
        };
        let interval = interval.unwrap_or(DEFAULT_INTERVAL);
        let lease = duration_within(
            raw.lease.as_ref(),
            "daemon.lease",
            ((interval * 2).max(Duration::from_secs(2)), MAX_LEASE),
            " (twice daemon.interval: a lease outlives a pass)",
            at,
        )?;
        Ok(Self {
            state: raw.state.map(PathBuf::from),
            database,
            lease,
            queue,
            interval,
            max_tasks,
            retention: retention.unwrap_or(DEFAULT_RETENTION),
        })
    }
}

/// `[daemon] queue`: an SQS queue name, 1-80 letters, digits, `-` or `_`.
fn queue_name(q: &Spanned<String>, at: At) -> Result<String, ConfigError> {
    let name = q.get_ref();
    let fits = !name.is_empty()
        && name.len() <= 80
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !fits {
        return Err(at(
            Some(q.span()),
            format!(
                "daemon.queue {name:?} is not an SQS queue name (1-80 letters, digits, - or _)"
            ),
        ));
    }
    Ok(name.clone())
}

/// `[api]`, validated.
struct ApiSettings {
    listen: std::net::SocketAddr,
    token: Option<Secret>,
    allow_commands: bool,
    instance_profiles: Vec<String>,
    demand_hosts: Vec<DemandHost>,
}

impl ApiSettings {
    fn validate(raw: Option<RawApi>, at: At) -> Result<Self, ConfigError> {
        let raw = raw.unwrap_or_default();
        let listen = match &raw.listen {
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
        let token = raw.token.map(Secret::new);
        if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(at(None, "api.token must be at least 16 characters".into()));
        }
        let mut demand_hosts = Vec::new();
        for h in raw.demand_hosts.unwrap_or_default() {
            demand_hosts.push(
                DemandHost::parse(h.get_ref())
                    .map_err(|m| at(Some(h.span()), format!("api.demand_hosts: {m}")))?,
            );
        }
        Ok(Self {
            listen,
            token,
            allow_commands: raw.allow_commands.unwrap_or(false),
            instance_profiles: raw.instance_profiles.unwrap_or_default(),
            demand_hosts,
        })
    }
}

/// `[cost] on_demand`: USD per hour by instance type.
fn on_demand_prices(raw: Option<RawCost>, at: At) -> Result<BTreeMap<String, f64>, ConfigError> {
    let mut prices = BTreeMap::new();
    for (t, p) in raw.map(|c| c.on_demand).unwrap_or_default() {
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
        prices.insert(t.into_inner(), price);
    }
    Ok(prices)
}
