//! `[pool.NAME]`: a worker pool's settings ([`PoolSpec`]), validated like a
//! box's (every error names the file, line and column, or the JSON field for
//! the API), one function per part (types, subnets, capacities, demand).

use std::path::Path;
use std::time::Duration;

use spotkeeper_cloud::ImageRef;
use toml::Spanned;

use super::error::{At, ConfigError, duration, duration_at_least};
use super::launch::{
    LaunchTemplate, is_instance_type, validate_fallback, validate_root_disk, validate_subnets,
    validate_tags, validate_user_data, validate_zones,
};
use super::raw::{RawDemand, RawPool, RawPoolType};

/// Idle time before surplus instances are terminated, when not configured.
pub const DEFAULT_SCALE_DOWN_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long a demand request may take.
pub const DEFAULT_DEMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest demand timeout accepted: a queue-depth read that takes longer
/// is broken, and the pool's task waits for it.
pub const MAX_DEMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Upper bound of `max_capacity`: a typo should not launch a thousand machines.
pub const MAX_CAPACITY_LIMIT: u32 = 10_000;

/// One `[pool.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// The pool name (the table key).
    pub name: String,
    /// The launch settings boxes and pools share (image, zones, key, security
    /// groups, user data, tags, instance profile, root disk, fallback).
    pub launch: LaunchTemplate,
    /// The types the pool may run, with their capacity weights.
    pub types: Vec<PoolType>,
    /// Default price ceiling (USD/hour per instance) for types without their own.
    pub max_price: Option<f64>,
    /// Subnets to launch into (their zones are the pool's zones).
    pub subnets: Vec<String>,
    /// Capacity kept even without demand.
    pub min_capacity: u32,
    /// Capacity never exceeded, counting open spot requests.
    pub max_capacity: u32,
    /// One unit of capacity serves this many pending jobs.
    pub jobs_per_capacity: u32,
    /// How long the pool must have been over its desired capacity before
    /// surplus instances are terminated.
    pub scale_down_after: Duration,
    /// `max_lifetime = "12h"`: instances older than this are replaced (a
    /// quarter of the pool at most at a time, never all at once), so a
    /// long-running pool picks up new images.
    pub max_lifetime: Option<Duration>,
    /// Where the number of pending jobs comes from.
    pub demand: Demand,
    /// `on_interruption`: run on the instance by `spotkeeper agent` (which
    /// must be in the pool's image: a pool has no SSH settings), installed
    /// as a unit by the boot script the pool's user data then begins with.
    pub on_interruption: Option<super::OnInterruption>,
    /// `strategy`: with `price-capacity` (the default) or `capacity`, the
    /// offerings this owner saw interrupted over and over are launched in
    /// last ([`crate::rank::Offer::risk`]).
    pub strategy: crate::rank::Strategy,
}

impl PoolSpec {
    /// The user data of the pool's instances: the user's own, behind the
    /// boot script that installs the agent when the pool has a hook.
    pub fn user_data(&self) -> Option<String> {
        // Generated once when the config was read (see `validate_pool`).
        self.boot_user_data()
            .ok()
            .flatten()
            .or_else(|| self.launch.user_data.clone())
    }

    fn boot_user_data(&self) -> Result<Option<String>, crate::bootstrap::BootError> {
        let Some(h) = &self.on_interruption else {
            return Ok(self.launch.user_data.clone());
        };
        let volumes = crate::bootstrap::BootVolumes {
            agent: Some(crate::bootstrap::BootAgent {
                command: Some(h.command.clone()),
                timeout_secs: h.timeout.as_secs(),
            }),
            ..Default::default()
        };
        crate::bootstrap::user_data(&self.name, &volumes, self.launch.user_data.as_deref())
    }
}

impl PoolSpec {
    /// The capacity weight of `instance_type` (1 for a type no longer listed).
    pub fn capacity_of(&self, instance_type: &str) -> u32 {
        self.types
            .iter()
            .find(|t| t.instance_type == instance_type)
            .map_or(1, |t| t.capacity)
    }
}

/// A type a pool may run.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolType {
    /// Instance type.
    pub instance_type: String,
    /// Units of capacity one instance of it gives.
    pub capacity: u32,
    /// Its own price ceiling (USD/hour per instance), else the pool's.
    pub max_price: Option<f64>,
}

/// The demand source of a pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Demand {
    /// No source: the pool stays at `min_capacity`.
    None,
    /// GET returns a JSON array of pending jobs; the count is its length.
    Http {
        /// The URL.
        url: String,
        /// Request timeout.
        timeout: Duration,
        /// Extra request headers, as written in the config.
        headers: Vec<(String, String)>,
        /// An environment variable of the daemon whose value is sent as
        /// `Authorization: Bearer …` (read at each request, never stored).
        bearer_env: Option<String>,
        /// Registered through the API: asked only at addresses `[api]
        /// demand_hosts` allows (see [`crate::config::demand_hosts`]).
        guarded: bool,
    },
    /// An SQS queue's `ApproximateNumberOfMessages`.
    Sqs {
        /// Queue URL or name.
        queue: String,
    },
}

fn price(p: f64) -> Result<f64, String> {
    if p.is_finite() && p > 0.0 {
        Ok(p)
    } else {
        Err(format!(
            "max_price must be a positive number of USD per hour, not {p}"
        ))
    }
}

/// Validates one `[pool.NAME]` table.
pub(super) fn validate_pool(
    name: &str,
    p: RawPool,
    base: &Path,
    at: At,
) -> Result<PoolSpec, ConfigError> {
    let image = ImageRef::parse(p.image.get_ref()).map_err(|m| at(Some(p.image.span()), m))?;
    let max_price = match p.max_price {
        None => None,
        Some(m) => Some(price(*m.get_ref()).map_err(|e| at(Some(m.span()), e))?),
    };
    let (min_capacity, max_capacity) = capacities(p.min_capacity, p.max_capacity, at)?;
    let hook_span = p.on_interruption.as_ref().map(|h| h.span());
    let spec = PoolSpec {
        name: name.to_owned(),
        launch: LaunchTemplate {
            image,
            zones: validate_zones(p.zones, at)?,
            key_name: p.key_name,
            security_groups: p.security_groups,
            user_data: validate_user_data(p.user_data, p.user_data_file, base, at)?,
            tags: validate_tags(p.tags, at)?,
            iam_instance_profile: p.iam_instance_profile,
            root_disk: validate_root_disk(p.root_disk, at)?,
            fallback_on_demand: validate_fallback(p.fallback),
            metadata_tokens: p.metadata.map(|m| m.http_tokens).unwrap_or_default(),
        },
        types: pool_types(p.instance_types, at)?,
        max_price,
        subnets: validate_subnets(p.subnet, p.subnets, at)?,
        min_capacity,
        max_capacity,
        jobs_per_capacity: whole(p.jobs_per_capacity, "jobs_per_capacity", 1, 1, at)? as u32,
        scale_down_after: match &p.scale_down_after {
            None => DEFAULT_SCALE_DOWN_AFTER,
            Some(s) => duration(s, "scale_down_after", at)?,
        },
        max_lifetime: duration_at_least(
            p.max_lifetime.as_ref(),
            "max_lifetime",
            Duration::from_secs(600),
            "",
            at,
        )?,
        demand: p
            .demand
            .map(|d| demand(d, at))
            .transpose()?
            .unwrap_or(Demand::None),
        on_interruption: super::interruption::on_interruption(p.on_interruption, at)?,
        strategy: p.strategy.unwrap_or_default(),
    };
    spec.boot_user_data()
        .map_err(|e| at(hook_span, format!("on_interruption: {e}")))?;
    Ok(spec)
}

/// `instance_types = [ { type, capacity, max_price } … ]`.
fn pool_types(
    raw: Spanned<Vec<Spanned<RawPoolType>>>,
    at: At,
) -> Result<Vec<PoolType>, ConfigError> {
    let types_span = raw.span();
    let mut types: Vec<PoolType> = Vec::new();
    for t in raw.into_inner() {
        let span = t.span();
        let t = t.into_inner();
        let bad = |m: String| at(Some(span.clone()), format!("instance_types: {m}"));
        let ty = t.instance_type.trim();
        if !is_instance_type(ty) {
            return Err(bad(format!(
                "type {ty:?} is not of the form family.size, e.g. c7i.large"
            )));
        }
        if types.iter().any(|have| have.instance_type == ty) {
            return Err(bad(format!("type {ty:?} is listed twice")));
        }
        let capacity = t.capacity.unwrap_or(1);
        if !(1..=1000).contains(&capacity) {
            return Err(bad(format!(
                "capacity of {ty} must be a whole number from 1 to 1000, not {capacity}"
            )));
        }
        let max_price = t.max_price.map(price).transpose().map_err(bad)?;
        types.push(PoolType {
            instance_type: ty.to_owned(),
            capacity: capacity as u32,
            max_price,
        });
    }
    if types.is_empty() {
        return Err(at(
            Some(types_span),
            "instance_types is empty: list at least one { type = \"…\", capacity = N }".into(),
        ));
    }
    Ok(types)
}

/// A whole number from `least` to [`MAX_CAPACITY_LIMIT`], `default` when not set.
fn whole(
    v: Option<Spanned<i64>>,
    what: &str,
    default: i64,
    least: i64,
    at: At,
) -> Result<i64, ConfigError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let n = *v.get_ref();
    if n < least || n > i64::from(MAX_CAPACITY_LIMIT) {
        return Err(at(
            Some(v.span()),
            format!("{what} must be from {least} to {MAX_CAPACITY_LIMIT}, not {n}"),
        ));
    }
    Ok(n)
}

/// `min_capacity` and `max_capacity`, the first not above the second.
fn capacities(
    min: Option<Spanned<i64>>,
    max: Spanned<i64>,
    at: At,
) -> Result<(u32, u32), ConfigError> {
    let min_span = min.as_ref().map(Spanned::span);
    let min_capacity = whole(min, "min_capacity", 0, 0, at)? as u32;
    let max_capacity = whole(Some(max), "max_capacity", 0, 1, at)? as u32;
    if min_capacity > max_capacity {
        return Err(at(
            min_span,
            format!("min_capacity {min_capacity} is above max_capacity {max_capacity}"),
        ));
    }
    Ok((min_capacity, max_capacity))
}

/// `demand = { http = … }` or `{ sqs = … }`.
fn demand(raw: Spanned<RawDemand>, at: At) -> Result<Demand, ConfigError> {
    let span = raw.span();
    let d = raw.into_inner();
    let bad = |m: String| at(Some(span.clone()), format!("demand: {m}"));
    match (d.http.clone(), d.sqs.clone()) {
        (Some(url), None) => http_demand(url, d, &bad),
        (None, Some(queue)) => {
            if !d.headers.is_empty() || d.bearer_env.is_some() {
                return Err(bad("headers and bearer_env only apply to http".into()));
            }
            if queue.trim().is_empty() {
                return Err(bad("sqs is empty: give a queue URL or name".into()));
            }
            if d.timeout.is_some() {
                return Err(bad("timeout only applies to http".into()));
            }
            Ok(Demand::Sqs { queue })
        }
        _ => Err(bad(
            "give exactly one source: { http = \"URL\" } or { sqs = \"queue\" }".into(),
        )),
    }
}

/// `demand = { http = URL, timeout, headers, bearer_env }`.
fn http_demand(
    url: String,
    d: RawDemand,
    bad: &dyn Fn(String) -> ConfigError,
) -> Result<Demand, ConfigError> {
    let timeout = match &d.timeout {
        None => DEFAULT_DEMAND_TIMEOUT,
        Some(t) => {
            let d = humantime::parse_duration(t).map_err(|e| bad(format!("timeout {t:?}: {e}")))?;
            if d > MAX_DEMAND_TIMEOUT {
                return Err(bad(format!(
                    "timeout {t:?} is over the limit of {}",
                    humantime::format_duration(MAX_DEMAND_TIMEOUT)
                )));
            }
            d
        }
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad(format!("http {url:?} is not an http(s) URL")));
    }
    for (name, value) in &d.headers {
        let ok_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !ok_name || name.eq_ignore_ascii_case("host") {
            return Err(bad(format!(
                "headers: {name:?} is not a header name this can send"
            )));
        }
        if value.bytes().any(|b| b.is_ascii_control()) {
            return Err(bad(format!(
                "headers: the value of {name} holds control characters"
            )));
        }
    }
    if let Some(var) = &d.bearer_env {
        if var.is_empty()
            || !var
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad(format!(
                "bearer_env {var:?} must be an environment variable name (A-Z, 0-9, _)"
            )));
        }
        if d.headers
            .keys()
            .any(|h| h.eq_ignore_ascii_case("authorization"))
        {
            return Err(bad(
                "set bearer_env or an Authorization header, not both".into()
            ));
        }
    }
    Ok(Demand::Http {
        url,
        timeout,
        headers: d.headers.into_iter().collect(),
        bearer_env: d.bearer_env,
        guarded: false,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::Demand;
    use crate::config::parse;

    const POOL: &str = r#"
[pool.builders]
image = "ubuntu:24.04"
instance_types = [ { type = "c7i.large", capacity = 1 }, { type = "c7i.xlarge", capacity = 2, max_price = 0.09 } ]
zones = ["us-east-1a", "us-east-1b", "us-east-1c"]
min_capacity = 0
max_capacity = 40
jobs_per_capacity = 1
scale_down_after = "10m"
fallback = "on-demand"
demand = { http = "http://queue.internal:8080/v1/jobs?state=PENDING" }
tags = { team = "ci" }
"#;

    fn err(text: &str) -> String {
        parse(Path::new("p.toml"), text)
            .expect_err("invalid")
            .to_string()
    }

    #[test]
    fn the_documented_pool_parses() {
        let c = parse(Path::new("p.toml"), POOL).expect("valid");
        let p = &c.pools["builders"];
        assert_eq!(p.types.len(), 2);
        assert_eq!(p.capacity_of("c7i.xlarge"), 2);
        assert_eq!(p.types[1].max_price, Some(0.09));
        assert_eq!(p.max_capacity, 40);
        assert!(p.launch.fallback_on_demand);
        assert!(matches!(&p.demand, Demand::Http { url, .. } if url.contains("PENDING")));
        let sqs = POOL.replace(
            r#"demand = { http = "http://queue.internal:8080/v1/jobs?state=PENDING" }"#,
            r#"demand = { sqs = "jobs" }"#,
        );
        let c = parse(Path::new("p.toml"), &sqs).expect("valid");
        assert_eq!(
            c.pools["builders"].demand,
            Demand::Sqs {
                queue: "jobs".into()
            }
        );
    }

    #[test]
    fn bad_weights_limits_and_sources_are_located() {
        let e = err(&POOL.replace("capacity = 2,", "capacity = 0,"));
        assert!(
            e.contains("p.toml:4:") && e.contains("capacity of c7i.xlarge"),
            "{e}"
        );
        let e = err(&POOL.replace("min_capacity = 0", "min_capacity = 50"));
        assert!(
            e.contains("p.toml:6:") && e.contains("above max_capacity 40"),
            "{e}"
        );
        let e = err(&POOL.replace("max_capacity = 40", "max_capacity = 0"));
        assert!(e.contains("max_capacity must be from 1"), "{e}");
        let e = err(&POOL.replace("jobs_per_capacity = 1", "jobs_per_capacity = 0"));
        assert!(e.contains("jobs_per_capacity"), "{e}");
        let e = err(&POOL.replace("max_price = 0.09", "max_price = -1.0"));
        assert!(e.contains("max_price must be a positive"), "{e}");
        let e = err(&POOL.replace("{ http = \"http://queue", "{ http = \"ftp://queue"));
        assert!(e.contains("demand: http"), "{e}");
        let e = err(&POOL.replace(
            r#"demand = { http = "http://queue.internal:8080/v1/jobs?state=PENDING" }"#,
            r#"demand = { }"#,
        ));
        assert!(e.contains("exactly one source"), "{e}");
        let e = err(&POOL.replace("type = \"c7i.large\"", "type = \"large\""));
        assert!(e.contains("family.size"), "{e}");
        let e = err(&POOL.replace("scale_down_after = \"10m\"", "scale_down_after = \"soon\""));
        assert!(e.contains("scale_down_after"), "{e}");
        let e = err(&POOL.replace("scale_down_after = \"10m\"", "max_lifetime = \"5m\""));
        assert!(e.contains("max_lifetime must be at least 10m"), "{e}");
        let ok = POOL.replace("scale_down_after = \"10m\"", "max_lifetime = \"12h\"");
        let c = parse(Path::new("p.toml"), &ok).expect("valid");
        assert_eq!(
            c.pools["builders"].max_lifetime,
            Some(std::time::Duration::from_secs(12 * 3600))
        );
        let e = err(&POOL.replace("capacity = 1 }", "capacity = 1, weight = 3 }"));
        assert!(e.contains("weight"), "{e}");
        let e = err(&format!(
            "{POOL}\n[box.builders]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.1\n"
        ));
        assert!(e.contains("name of a box"), "{e}");
    }
}
