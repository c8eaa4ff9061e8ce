//! `on_interruption = { command, timeout }` and `agent = true`: what runs on a
//! box's instance in the two minutes between a spot warning and the loss of
//! the instance (see [`crate::hook`] for how it is run and waited for).

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::error::{At, ConfigError, duration_within};

/// How long the hook may run when `timeout` is not set.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(90);

/// The longest `timeout` accepted: AWS gives two minutes between the warning
/// and the interruption, and the data volume still has to move inside them
/// (see [`crate::hook::MOVE_RESERVE`]).
pub const MAX_HOOK_TIMEOUT: Duration = Duration::from_secs(100);

/// `on_interruption`: a command run on the instance when its spot warning
/// arrives (checkpoint, flush, drain, deregister).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnInterruption {
    /// Run with the login shell of the box's SSH user (or `sh -c` by the agent).
    pub command: String,
    /// Cut after this long (and never later than the warning allows).
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOnInterruption {
    command: String,
    timeout: Option<Spanned<String>>,
}

/// Validates `on_interruption`; `None` when not set.
pub(crate) fn on_interruption(
    raw: Option<Spanned<RawOnInterruption>>,
    at: At,
) -> Result<Option<OnInterruption>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let span = raw.span();
    let raw = raw.into_inner();
    let command = raw.command.trim();
    if command.is_empty() {
        return Err(at(Some(span), "on_interruption.command is empty".into()));
    }
    // One line: it travels on an SSH command line and, with `agent = true`,
    // in the boot script's unit file.
    if command.chars().any(|c| c.is_control()) {
        return Err(at(
            Some(span),
            "on_interruption.command must be one line without control characters \
             (put a longer hook in a script on the image and name it here)"
                .into(),
        ));
    }
    let timeout = duration_within(
        raw.timeout.as_ref(),
        "on_interruption.timeout",
        (Duration::from_secs(1), MAX_HOOK_TIMEOUT),
        "",
        at,
    )?
    .unwrap_or(DEFAULT_HOOK_TIMEOUT);
    Ok(Some(OnInterruption {
        command: command.to_owned(),
        timeout,
    }))
}
