//! `[box.NAME]`: a box's settings ([`BoxSpec`]) and their validation, one
//! function per part (image, types, ready check, SSH, volumes, DNS, images).
//! Errors point at the offending value.

use std::path::Path;
use std::time::Duration;

use spotkeeper_cloud::{ImageRef, Market, SshSettings};
use toml::Spanned;

use super::error::{At, ConfigError, duration_at_least};
use super::keywords::OnRebalance;
pub use super::keywords::{DnsAddress, OnStop, PriceCap};
use super::launch::{
    EBS_TYPES, LaunchTemplate, expand_path, is_instance_type, validate_fallback,
    validate_root_disk, validate_subnets, validate_tags, validate_user_data, validate_zones,
};
use super::raw::{RawBox, RawDns, RawImages, RawReady, RawSsh, RawVolume};

/// How long `up` waits for a box to answer when `ready` sets no timeout: boot
/// plus cloud-init on a small instance takes one to three minutes.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The longest `ready.timeout` accepted: a box that has not answered in an
/// hour will not, and its task would otherwise hold the box that long.
pub const MAX_READY_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// One `[box.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxSpec {
    /// The box name (the table key).
    pub name: String,
    /// The launch settings boxes and pools share (image, zones, key, security
    /// groups, user data, tags, instance profile, root disk, fallback).
    pub launch: LaunchTemplate,
    /// Instance types, most preferred first.
    pub instance_types: Vec<String>,
    /// Price ceiling in USD/hour, checked by spotkeeper against the spot price.
    pub max_price: f64,
    /// Spot (default) or on-demand.
    pub market: Market,
    /// Subnets (`subnet = "…"` or `subnets = [...]`): the box launches into
    /// the subnet of the zone it picks (names of security groups are looked
    /// up in each subnet's VPC); empty: the default VPC.
    pub subnets: Vec<String>,
    /// How to tell the box is up.
    pub ready: ReadyCheck,
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
    /// Who holds the ceiling: spotkeeper (each pass moves a box whose price
    /// rose above it, when there is an offering under it) or AWS too
    /// (`price_cap = "aws"`: sent as the spot `MaxPrice`, so AWS interrupts
    /// above it, as the original launcher's bid did).
    pub price_cap: PriceCap,
    /// `on_interruption`: run on the instance when its spot warning arrives.
    pub on_interruption: Option<super::OnInterruption>,
    /// `agent = true`: `spotkeeper agent` on the instance watches for the
    /// warning itself and runs the hook (the daemon then only waits for it).
    pub agent: bool,
    /// `slo = { recover_within }`: how fast a drill (or an interruption)
    /// must see the box back.
    pub slo: Option<Duration>,
    /// `strategy`: how the offering is chosen ([`crate::rank`]).
    pub strategy: crate::rank::Strategy,
    /// `regions`: where the box may live, its home first; empty: the
    /// `[aws]` region only. The others receive the data volume's replicas.
    pub regions: Vec<String>,
    /// `failover_after` (default 10 min): how long launches at home fail for
    /// want of capacity or of an offering under the ceiling before the box
    /// moves to its next region ([`crate::failover`]).
    pub failover_after: Duration,
    /// `return_after` (default 1 h): how long the home region has had an
    /// offering under the ceiling before a box that left comes back.
    pub return_after: Duration,
    /// `region_surcharge = { "us-west-2" = 0.004 }`: USD/hour added to the
    /// price of every offering in that region when regions are compared
    /// (data transfer, latency): a failover goes to the cheapest region
    /// with it, and `price BOX` ranks the other regions by it.
    pub region_surcharge: std::collections::BTreeMap<String, f64>,
}

/// `failover_after` unless set.
pub const DEFAULT_FAILOVER_AFTER: Duration = Duration::from_secs(10 * 60);
/// `return_after` unless set.
pub const DEFAULT_RETURN_AFTER: Duration = Duration::from_secs(3600);

impl BoxSpec {
    /// The regions other than the home (the first), where replicas go.
    pub fn other_regions(&self) -> &[String] {
        self.regions.get(1..).unwrap_or_default()
    }
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
    /// snapshots are kept (the newest; older ones are deleted after each
    /// stop); with `replicate`, how many replicas in each region.
    pub keep: usize,
    /// `replicate = "1h"` (data volumes): snapshot the volume this often and
    /// copy the newest snapshot to the box's other regions.
    pub replicate: Option<Duration>,
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

/// Validates one `[box.NAME]` table.
pub(super) fn validate_box(
    name: &str,
    b: RawBox,
    base: &Path,
    at: At,
) -> Result<BoxSpec, ConfigError> {
    let (image, image_from_box) = box_image(&b.image, b.base_image.as_ref(), b.image_from_box, at)?;
    let instance_types = instance_types(b.instance_types, at)?;
    let max_price = *b.max_price.get_ref();
    if !max_price.is_finite() || max_price <= 0.0 {
        return Err(at(
            Some(b.max_price.span()),
            format!("max_price must be a positive number of USD per hour, not {max_price}"),
        ));
    }
    let data_span = b.data_volume.as_ref().map(|d| d.span());
    let data_volume = volume(b.data_volume, "data_volume", at)?;
    let root_span = b.root_volume.as_ref().map(|r| r.span());
    let root_volume = volume(b.root_volume, "root_volume", at)?;
    let regions = regions(b.regions, at)?;
    replicated_somewhere(data_volume.as_ref(), &regions, data_span, at)?;
    let (failover_after, return_after) =
        failover_times(b.failover_after, b.return_after, regions.len(), at)?;
    let region_surcharge = surcharges(b.region_surcharge, &regions, at)?;
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
    Ok(BoxSpec {
        name: name.to_owned(),
        launch: LaunchTemplate {
            image,
            zones: validate_zones(b.zones, at)?,
            key_name: b.key_name,
            security_groups: b.security_groups,
            user_data: validate_user_data(b.user_data, b.user_data_file, base, at)?,
            tags: validate_tags(b.tags, at)?,
            iam_instance_profile: b.iam_instance_profile,
            root_disk: validate_root_disk(b.root_disk, at)?,
            fallback_on_demand: validate_fallback(b.fallback),
            metadata_tokens: b.metadata.map(|m| m.http_tokens).unwrap_or_default(),
        },
        instance_types,
        max_price,
        market: b.market.unwrap_or(Market::Spot),
        subnets: validate_subnets(b.subnet, b.subnets, at)?,
        ready: ready_check(b.ready, at)?,
        ssh: ssh_settings(b.ssh, base, at)?,
        data_volume,
        root_volume,
        move_volume: b.move_volume,
        dns: b.dns.map(|d| dns(d, at)).transpose()?,
        keep_dns: b.keep_dns,
        elastic_ip: elastic_ip(b.elastic_ip, at)?,
        adopt_elastic_ip: b.adopt_elastic_ip.unwrap_or(false),
        image_from_box,
        images: b
            .images
            .map(|i| image_policy(i, at))
            .transpose()?
            .unwrap_or_default(),
        replace_on_rebalance: b.on_rebalance == Some(OnRebalance::Replace),
        price_cap: b.price_cap.unwrap_or_default(),
        on_interruption: super::interruption::on_interruption(b.on_interruption, at)?,
        agent: b.agent.unwrap_or(false),
        slo: slo(b.slo, at)?,
        strategy: b.strategy.unwrap_or_default(),
        regions,
        failover_after,
        return_after,
        region_surcharge,
    })
}

/// `region_surcharge`: only the box's other regions, each a finite USD/hour
/// from 0 to 10.
fn surcharges(
    raw: Option<Spanned<std::collections::BTreeMap<String, f64>>>,
    regions: &[String],
    at: At,
) -> Result<std::collections::BTreeMap<String, f64>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Default::default());
    };
    let span = raw.span();
    let map = raw.into_inner();
    for (region, usd) in &map {
        if !regions.get(1..).unwrap_or_default().contains(region) {
            return Err(at(
                Some(span.clone()),
                format!(
                    "region_surcharge names {region}, which is not one of the box's other \
                     regions ({})",
                    regions.get(1..).unwrap_or_default().join(", ")
                ),
            ));
        }
        if !usd.is_finite() || !(0.0..=10.0).contains(usd) {
            return Err(at(
                Some(span.clone()),
                format!("region_surcharge for {region} must be 0 to 10 USD/hour, not {usd}"),
            ));
        }
    }
    Ok(map)
}

/// `failover_after` (0 s to a day: 0 moves at the first failure) and
/// `return_after` (a second to a week), only with a second region.
fn failover_times(
    failover_after: Option<Spanned<String>>,
    return_after: Option<Spanned<String>>,
    regions: usize,
    at: At,
) -> Result<(Duration, Duration), ConfigError> {
    if regions < 2
        && let Some(v) = failover_after.as_ref().or(return_after.as_ref())
    {
        return Err(at(
            Some(v.span()),
            "failover_after and return_after move the box between its regions: list them in \
             regions = [\"home\", \"other\"]"
                .into(),
        ));
    }
    let after = super::error::duration_within(
        failover_after.as_ref(),
        "failover_after",
        (Duration::ZERO, Duration::from_secs(24 * 3600)),
        "",
        at,
    )?;
    let back = super::error::duration_within(
        return_after.as_ref(),
        "return_after",
        (Duration::from_secs(1), Duration::from_secs(7 * 86_400)),
        "",
        at,
    )?;
    Ok((
        after.unwrap_or(DEFAULT_FAILOVER_AFTER),
        back.unwrap_or(DEFAULT_RETURN_AFTER),
    ))
}

/// Whether `name` has the form of an AWS region name: `us-east-1`,
/// `ap-southeast-2`, `us-gov-west-1`.
fn is_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    let lower = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase());
    parts.len() >= 3
        && parts[0].len() == 2
        && lower(&parts[0])
        && parts[1..parts.len() - 1].iter().all(lower)
        && parts
            .last()
            .is_some_and(|p| (1..=2).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `data_volume.replicate` needs a region besides the home.
fn replicated_somewhere(
    data: Option<&VolumeSpec>,
    regions: &[String],
    span: Option<std::ops::Range<usize>>,
    at: At,
) -> Result<(), ConfigError> {
    if data.is_some_and(|d| d.replicate.is_some()) && regions.len() < 2 {
        return Err(at(
            span,
            "data_volume.replicate copies the volume to the box's other regions: list them \
             in regions = [\"home\", \"other\"]"
                .into(),
        ));
    }
    Ok(())
}

/// `regions = ["us-east-1", "us-west-2"]`: AWS region names, each once.
fn regions(raw: Option<Spanned<Vec<Spanned<String>>>>, at: At) -> Result<Vec<String>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let span = raw.span();
    let mut out: Vec<String> = Vec::new();
    for r in raw.into_inner() {
        let name = r.get_ref().trim();
        if !is_region(name) {
            return Err(at(
                Some(r.span()),
                format!("{name:?} is not an AWS region name, e.g. us-east-1"),
            ));
        }
        if out.iter().any(|have| have == name) {
            return Err(at(Some(r.span()), format!("region {name} is listed twice")));
        }
        out.push(name.to_owned());
    }
    if out.is_empty() {
        return Err(at(
            Some(span),
            "regions lists no region (leave it out for the [aws] region alone)".into(),
        ));
    }
    Ok(out)
}

/// `slo = { recover_within }`: from a second to a day.
fn slo(slo: Option<super::raw::RawSlo>, at: At) -> Result<Option<Duration>, ConfigError> {
    let Some(s) = slo else { return Ok(None) };
    super::error::duration_within(
        Some(&s.recover_within),
        "slo.recover_within",
        (Duration::from_secs(1), Duration::from_secs(24 * 3600)),
        "",
        at,
    )
}

/// `image` (and `base_image`, `image_from_box`): what to launch from, and
/// whether the box's own newest image comes first.
fn box_image(
    image: &Spanned<String>,
    base_image: Option<&Spanned<String>>,
    image_from_box: Option<bool>,
    at: At,
) -> Result<(ImageRef, bool), ConfigError> {
    // `image = "box:latest"`: the box's newest image, falling back to `base_image`.
    if image.get_ref().trim() == "box:latest" {
        let base = base_image.ok_or_else(|| {
            at(
                Some(image.span()),
                "image = \"box:latest\" needs base_image = \"…\" for when the box has no image yet"
                    .into(),
            )
        })?;
        let parsed = ImageRef::parse(base.get_ref()).map_err(|m| at(Some(base.span()), m))?;
        return Ok((parsed, true));
    }
    if let Some(base) = base_image {
        return Err(at(
            Some(base.span()),
            "base_image only goes with image = \"box:latest\"".into(),
        ));
    }
    let parsed = ImageRef::parse(image.get_ref()).map_err(|m| at(Some(image.span()), m))?;
    Ok((parsed, image_from_box.unwrap_or(false)))
}

/// `instance_types`: one or more `family.size`, each once.
fn instance_types(
    types: Spanned<Vec<Spanned<String>>>,
    at: At,
) -> Result<Vec<String>, ConfigError> {
    let types_span = types.span();
    let mut instance_types: Vec<String> = Vec::new();
    for t in types.into_inner() {
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
    Ok(instance_types)
}

/// `ready`: how `up` tells the box answers (default: TCP 22).
fn ready_check(ready: Option<Spanned<RawReady>>, at: At) -> Result<ReadyCheck, ConfigError> {
    let Some(r) = ready else {
        return Ok(ReadyCheck::Tcp {
            host: None,
            port: 22,
            timeout: DEFAULT_READY_TIMEOUT,
        });
    };
    let span = r.span();
    let timeout = |t: Option<String>| ready_timeout(t, || at(Some(span.clone()), String::new()));
    Ok(match r.into_inner() {
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
    })
}

/// `ready.timeout`: a duration up to [`MAX_READY_TIMEOUT`]; `here` places the error.
fn ready_timeout(
    t: Option<String>,
    here: impl Fn() -> ConfigError,
) -> Result<Duration, ConfigError> {
    let Some(t) = t else {
        return Ok(DEFAULT_READY_TIMEOUT);
    };
    let bad = |message: String| ConfigError { message, ..here() };
    let d = humantime::parse_duration(&t).map_err(|e| {
        bad(format!(
            "ready.timeout {t:?} is not a duration like \"10m\" or \"90s\": {e}"
        ))
    })?;
    if d > MAX_READY_TIMEOUT {
        return Err(bad(format!(
            "ready.timeout {t:?} is over the limit of {}",
            humantime::format_duration(MAX_READY_TIMEOUT)
        )));
    }
    Ok(d)
}

/// `ssh`: how `exec` and `ssh` reach the box.
fn ssh_settings(
    ssh: Option<Spanned<RawSsh>>,
    base: &Path,
    at: At,
) -> Result<SshSettings, ConfigError> {
    let Some(raw) = ssh else {
        return Ok(SshSettings::default());
    };
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
        Some(t) => {
            humantime::parse_duration(&t).map_err(|e| bad(format!("connect_timeout {t:?}: {e}")))?
        }
    };
    Ok(SshSettings {
        user: r.user,
        key_file: r.key_file.map(|k| expand_path(&k, base)),
        port: r.port,
        host: r.host,
        jump: r.jump,
        known_hosts: r.known_hosts.map(|k| expand_path(&k, base)),
        connect_timeout,
        options: Vec::new(),
    })
}

/// `data_volume` / `root_volume` (`what` says which).
fn volume(
    raw: Option<Spanned<RawVolume>>,
    what: &str,
    at: At,
) -> Result<Option<VolumeSpec>, ConfigError> {
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
    if !EBS_TYPES.contains(&v.kind.as_str()) {
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
    let on_stop = v.on_stop.unwrap_or_default();
    let replicate = replicate(what, v.replicate, at)?;
    let keep = match (v.keep, on_stop == OnStop::Snapshot || replicate.is_some()) {
        (None, _) => DEFAULT_STOP_SNAPSHOTS,
        (Some(k), true) if (1..=100).contains(&k) => k as usize,
        (Some(k), true) => {
            return Err(bad(format!("keep must be 1-100 snapshots, not {k}")));
        }
        (Some(_), false) => {
            return Err(bad(
                "keep applies to on_stop = \"snapshot\" (how many stop snapshots to keep) \
                 or replicate (how many replicas per region)"
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
        replicate,
    }))
}

/// `replicate = "1h"` (data volumes only): from 10 minutes to a week.
fn replicate(
    what: &str,
    raw: Option<Spanned<String>>,
    at: At,
) -> Result<Option<Duration>, ConfigError> {
    match (what, raw) {
        (_, None) => Ok(None),
        ("root_volume", Some(r)) => Err(at(
            Some(r.span()),
            "root_volume: replicate applies to data_volume".into(),
        )),
        (_, Some(r)) => super::error::duration_within(
            Some(&r),
            "data_volume.replicate",
            (Duration::from_secs(600), Duration::from_secs(7 * 86_400)),
            " (each replica is a snapshot and a copy per region)",
            at,
        ),
    }
}

/// A DNS name: labels of letters, digits, '-' or '*', with or without the final dot.
fn is_dns_name(n: &str) -> bool {
    let n = n.trim_end_matches('.');
    !n.is_empty()
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        })
}

/// `dns = { zone, name, ttl, address, private, zone_id, adopt }`.
fn dns(raw: Spanned<RawDns>, at: At) -> Result<DnsSpec, ConfigError> {
    let span = raw.span();
    let d = raw.into_inner();
    let bad = |m: String| at(Some(span.clone()), format!("dns: {m}"));
    if !is_dns_name(&d.zone) || !is_dns_name(&d.name) {
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
    let address = d.address.unwrap_or_default();
    if address == DnsAddress::Both && (d.private || d.zone_id.is_some()) {
        return Err(bad(
            "address = \"both\" writes the public and the private zone of the name; \
             private and zone_id do not apply"
                .into(),
        ));
    }
    let zone_id = d
        .zone_id
        .map(|z| z.trim_start_matches("/hostedzone/").to_owned());
    if let Some(id) = &zone_id {
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
    Ok(DnsSpec {
        zone,
        name,
        ttl: d.ttl,
        address,
        adopt: d.adopt,
        private: d.private,
        zone_id,
    })
}

/// `elastic_ip`: an allocation id.
fn elastic_ip(raw: Option<Spanned<String>>, at: At) -> Result<Option<String>, ConfigError> {
    match raw {
        Some(e) if !e.get_ref().starts_with("eipalloc-") => Err(at(
            Some(e.span()),
            format!(
                "elastic_ip {:?} is not an allocation id (eipalloc-…)",
                e.get_ref()
            ),
        )),
        other => Ok(other.map(Spanned::into_inner)),
    }
}

/// `images = { keep, every }`.
fn image_policy(raw: Spanned<RawImages>, at: At) -> Result<ImagePolicy, ConfigError> {
    let span = raw.span();
    let i = raw.into_inner();
    if i.keep == Some(0) {
        return Err(at(Some(span), "images.keep must be at least 1".into()));
    }
    let every = i
        .every
        .map(|t| Spanned::new(span.clone(), t))
        .map(|t| {
            duration_at_least(
                Some(&t),
                "images.every",
                Duration::from_secs(3600),
                " (images take minutes and cost storage)",
                at,
            )
        })
        .transpose()?
        .flatten();
    Ok(ImagePolicy {
        keep: i.keep,
        every,
    })
}
