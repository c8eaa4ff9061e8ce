//! `spotkeeper agent`: the hook's runner on the instance (see
//! `spotkeeper_engine::agent`). It reads no config file and no state: the
//! boot script passes the box's settings as flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use spotkeeper_engine::agent::{self, AgentSettings};
use spotkeeper_engine::config::MAX_HOOK_TIMEOUT;

use crate::Failure;

/// The flags, as given.
pub struct Flags<'a> {
    pub on_interruption: &'a Option<String>,
    pub on_interruption_file: &'a Option<PathBuf>,
    pub timeout: &'a str,
    pub mount: &'a Option<PathBuf>,
    pub poll: &'a str,
    pub done_file: &'a Option<PathBuf>,
}

fn duration(
    flag: &str,
    value: &str,
    (least, most): (Duration, Duration),
) -> Result<Duration, Failure> {
    let d = humantime::parse_duration(value)
        .map_err(|e| Failure::Usage(anyhow::anyhow!("--{flag} {value:?}: {e}")))?;
    if d < least || d > most {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--{flag} {value:?}: must be from {} to {}",
            humantime::format_duration(least),
            humantime::format_duration(most)
        )));
    }
    Ok(d)
}

pub async fn run(flags: Flags<'_>) -> Result<ExitCode, Failure> {
    let from_file = match flags.on_interruption_file {
        Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
            Failure::Usage(anyhow::anyhow!(
                "--on-interruption-file {}: {e}",
                f.display()
            ))
        })?),
        None => None,
    };
    let command = flags
        .on_interruption
        .clone()
        .or(from_file)
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    let settings = AgentSettings {
        endpoint: agent::endpoint_from_env(),
        command,
        timeout: duration(
            "timeout",
            flags.timeout,
            (Duration::from_secs(1), MAX_HOOK_TIMEOUT),
        )?,
        mount: flags.mount.clone(),
        // The bound: a warning is seen within 5 s of appearing.
        poll: duration(
            "poll",
            flags.poll,
            (Duration::from_millis(100), Duration::from_secs(5)),
        )?,
        done_file: flags.done_file.clone(),
    };
    agent::run(&settings).await?;
    Ok(ExitCode::SUCCESS)
}
