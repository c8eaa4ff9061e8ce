//! The keywords of the config file (`market`, `on_stop`, `address`,
//! `price_cap`, `fallback`, `on_rebalance`, `retry_mode`, a sink's `kind`):
//! enums serde reads itself, so an unknown word is a file:line:col error
//! naming the choices.

use serde::Deserialize;

/// `price_cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PriceCap {
    /// spotkeeper compares prices with the ceiling (at launch and each pass).
    #[default]
    Spotkeeper,
    /// The ceiling is also sent to AWS as `MaxPrice`.
    Aws,
}

/// What happens to a volume when its box is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStop {
    /// Keep the volume (default).
    #[default]
    Retain,
    /// Snapshot it, then delete it; the next `up` restores it from the snapshot.
    Snapshot,
    /// Delete it and its data.
    Delete,
}

/// Which address the DNS record points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsAddress {
    /// The public IPv4 address.
    #[default]
    Public,
    /// The private address.
    Private,
    /// Both: the public address in the public zone and the private one in
    /// the private zone of the same name (split-horizon).
    Both,
}

/// What a sink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// JSON body with the event's fields; signed when a secret is set.
    Webhook,
    /// A Slack incoming webhook: `{"text": …}`.
    Slack,
}

/// `fallback`: what to launch when no spot offering can be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Fallback {
    /// Nothing: wait for spot.
    None,
    /// An on-demand instance.
    OnDemand,
}

/// `on_rebalance`: what a rebalance recommendation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OnRebalance {
    /// Nothing (the two-minute warning may still come).
    Ignore,
    /// Start the replacement now.
    Replace,
}

/// `[aws] retry_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RetryMode {
    /// The SDK's standard retries.
    Standard,
    /// Standard plus client-side rate limiting.
    Adaptive,
}
