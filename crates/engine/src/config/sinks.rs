//! `[[notify]]`: the notification sinks as configured ([`Sink`]) and their
//! validation (the notify module delivers). A sink's URL and secret are
//! [`Secret`]s: `Debug` shows only the URL's scheme and host.

use std::fmt;

use toml::Spanned;

use super::Secret;
use super::error::{At, ConfigError};
pub use super::keywords::SinkKind;
use super::raw::RawSink;
use crate::event_kind::EventKind;

/// The event kinds a sink gets when its table says no `events`
/// (a box replaced or failing to be, launches failing for capacity, quota
/// or permissions, a pool held because its demand cannot be read, a box
/// falling back to on-demand, an `on_interruption` hook that failed, a
/// data volume's copy to another region that failed, a box moving to
/// another region and back, or failing to).
pub const DEFAULT_EVENTS: &[EventKind] = &[
    EventKind::Replaced,
    EventKind::ReplaceFailed,
    EventKind::LaunchFailed,
    EventKind::NoCapacity,
    EventKind::Quota,
    EventKind::Unauthorized,
    EventKind::DemandFailed,
    EventKind::Fallback,
    EventKind::HookFailed,
    EventKind::ReplicateFailed,
    EventKind::RegionFailover,
    EventKind::RegionReturn,
    EventKind::FailoverFailed,
];

/// Where the signing secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the config.
    Inline(Secret),
    /// Read from this environment variable when the daemon starts.
    Env(String),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(***)"),
            SecretSource::Env(name) => write!(f, "Env({name})"),
        }
    }
}

/// A `[[notify]]` table.
#[derive(Clone, PartialEq, Eq)]
pub struct Sink {
    /// Its name (`name`, else `KIND-N` by position): the key of its cursor.
    pub name: String,
    /// Webhook or Slack.
    pub kind: SinkKind,
    /// Where to POST; secret as a whole (never logged).
    pub url: Secret,
    /// Signing secret (webhooks).
    pub secret: Option<SecretSource>,
    /// The event kinds it gets.
    pub events: Vec<String>,
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &origin(self.url.expose()))
            .field("secret", &self.secret)
            .field("events", &self.events)
            .finish()
    }
}

/// `scheme://host[:port]` of a URL: all that may be said of a sink's address.
pub fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// Validates the `[[notify]]` tables; errors point at the offending value.
pub(super) fn validate(raw: Vec<Spanned<RawSink>>, at: At) -> Result<Vec<Sink>, ConfigError> {
    let mut sinks: Vec<Sink> = Vec::new();
    for (i, table) in raw.into_iter().enumerate() {
        let span = table.span();
        let r = table.into_inner();
        let kind = *r.kind.get_ref();
        let name = sink_name(r.name.as_ref(), kind, i, at)?;
        if sinks.iter().any(|s| s.name == name) {
            return Err(at(
                Some(r.name.as_ref().map_or(span.clone(), |n| n.span())),
                format!("two [[notify]] sinks are named {name:?}"),
            ));
        }
        let url = r.url.get_ref();
        match reqwest::Url::parse(url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {}
            _ => {
                return Err(at(
                    Some(r.url.span()),
                    format!(
                        "notify {name}: url must be an http(s) URL (got {})",
                        origin(url)
                    ),
                ));
            }
        }
        sinks.push(Sink {
            kind,
            url: Secret::new(url.clone()),
            secret: signing_secret(&name, kind, r.secret, r.secret_env, at)?,
            events: sink_events(&name, r.events, at)?,
            name,
        });
    }
    Ok(sinks)
}

/// `name`, else `KIND-N` by position.
fn sink_name(
    name: Option<&Spanned<String>>,
    kind: SinkKind,
    index: usize,
    at: At,
) -> Result<String, ConfigError> {
    let Some(n) = name else {
        let kind = match kind {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
        };
        return Ok(format!("{kind}-{}", index + 1));
    };
    let v = n.get_ref();
    if v.is_empty()
        || v.len() > 40
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(at(
            Some(n.span()),
            format!("notify name {v:?} must be 1-40 letters, digits, '-' or '_'"),
        ));
    }
    Ok(v.clone())
}

/// `secret` or `secret_env` (webhooks only).
fn signing_secret(
    name: &str,
    kind: SinkKind,
    secret: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    at: At,
) -> Result<Option<SecretSource>, ConfigError> {
    let slack = |s: &Spanned<String>, key: &str| {
        at(
            Some(s.span()),
            format!(
                "notify {name}: Slack does not check signatures; {key} applies to kind = \"webhook\""
            ),
        )
    };
    match (secret, secret_env) {
        (Some(s), Some(_)) => Err(at(
            Some(s.span()),
            format!("notify {name}: set secret or secret_env, not both"),
        )),
        (Some(s), None) if kind == SinkKind::Slack => Err(slack(&s, "secret")),
        (None, Some(e)) if kind == SinkKind::Slack => Err(slack(&e, "secret_env")),
        (Some(s), None) if s.get_ref().len() < 16 => Err(at(
            Some(s.span()),
            format!("notify {name}: secret must be at least 16 characters"),
        )),
        (Some(s), None) => Ok(Some(SecretSource::Inline(Secret::new(s.into_inner())))),
        (None, Some(e)) if e.get_ref().is_empty() => Err(at(
            Some(e.span()),
            format!("notify {name}: secret_env is empty"),
        )),
        (None, Some(e)) => Ok(Some(SecretSource::Env(e.into_inner()))),
        (None, None) => Ok(None),
    }
}

/// `events`: the kinds the sink gets ([`DEFAULT_EVENTS`] when not set),
/// each a kind spotkeeper records ([`EventKind`]) or `"*"` for all: a name
/// that is none (a typo) is an error at it, never a sink that hears nothing.
fn sink_events(
    name: &str,
    events: Option<Spanned<Vec<Spanned<String>>>>,
    at: At,
) -> Result<Vec<String>, ConfigError> {
    let Some(e) = events else {
        return Ok(DEFAULT_EVENTS
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect());
    };
    if e.get_ref().is_empty() {
        return Err(at(
            Some(e.span()),
            format!("notify {name}: events is empty (leave it out for the default kinds)"),
        ));
    }
    let mut kinds = Vec::new();
    for k in e.into_inner() {
        let span = k.span();
        let k = k.into_inner();
        if k != "*"
            && let Err(unknown) = k.parse::<EventKind>()
        {
            return Err(at(
                Some(span),
                format!("notify {name}: {unknown} (or \"*\" for all)"),
            ));
        }
        kinds.push(k);
    }
    Ok(kinds)
}
