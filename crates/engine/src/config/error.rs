//! Where a config error is: [`ConfigError`] (file, line, column, message)
//! and the helpers that turn a value's span in the file into one.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

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

/// Makes the error for a span of the file (`None`: no place in it).
pub(crate) type At<'a> = &'a dyn Fn(Option<Range<usize>>, String) -> ConfigError;

/// The error `message` at `span` of `text`, read from `path`.
pub(crate) fn locate_error(
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

/// The key of a `key = value` pair when `offset` points into the value (also
/// inside an inline table), so serde's "invalid type: string, expected f64"
/// or "unknown variant" can say which key it means.
pub(crate) fn key_before(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = text[line_start..offset].trim_end().strip_suffix('=')?;
    let key = before.rsplit([',', '{']).next()?.trim().trim_matches('"');
    (!key.is_empty() && !key.contains(['[', '=', '}'])).then(|| key.to_owned())
}

/// A duration written like "90s" or "10m" at `key`; an error there otherwise.
pub(crate) fn duration(
    value: &Spanned<String>,
    key: &str,
    at: At,
) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value.get_ref()).map_err(|e| {
        at(
            Some(value.span()),
            format!("{key} {:?}: {e}", value.get_ref()),
        )
    })?;
    // Added to a clock reading (Instant, SystemTime) such a duration
    // overflows it: an error here, never a panic there.
    if d > LONGEST {
        return Err(at(
            Some(value.span()),
            format!("{key} {:?} is longer than a hundred years", value.get_ref()),
        ));
    }
    Ok(d)
}

/// No duration of the config is longer (every key has a tighter bound of
/// its own, or none that matters below this).
const LONGEST: Duration = Duration::from_secs(100 * 31_557_600);

/// An optional duration at `key` from `least` (`why` says why) to `most`;
/// `None` when not set.
pub(crate) fn duration_within(
    value: Option<&Spanned<String>>,
    key: &str,
    (least, most): (Duration, Duration),
    why: &str,
    at: At,
) -> Result<Option<Duration>, ConfigError> {
    match (duration_at_least(value, key, least, why, at)?, value) {
        (Some(d), Some(v)) if d > most => Err(at(
            Some(v.span()),
            format!("{key} must be at most {}", humantime::format_duration(most)),
        )),
        (d, _) => Ok(d),
    }
}

/// An optional duration at `key` of at least `least`; `None` when not set.
pub(crate) fn duration_at_least(
    value: Option<&Spanned<String>>,
    key: &str,
    least: Duration,
    why: &str,
    at: At,
) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = value else { return Ok(None) };
    let d = duration(value, key, at)?;
    if d < least {
        return Err(at(
            Some(value.span()),
            format!(
                "{key} must be at least {}{why}",
                humantime::format_duration(least)
            ),
        ));
    }
    Ok(Some(d))
}
