//! Readiness checks: after an instance runs, `up` waits until the box answers
//! (a TCP port accepts, or a user command exits 0).

use std::time::Duration;

use spotkeeper_cloud::Instance;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

use crate::config::ReadyCheck;

/// A TCP connect attempt gives up after this long: long enough for a slow
/// handshake across regions, short enough to retry a dropped SYN soon.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a box did not become ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadyError {
    /// The instance has no address to probe and the check names no host.
    #[error("instance {0} has no IP address to probe; set ready.host or use check = \"command\"")]
    NoAddress(String),
    /// The deadline passed.
    #[error("{what} did not succeed within {}: {last}", humantime::format_duration(*.within))]
    Timeout {
        /// The probe.
        what: String,
        /// The timeout.
        within: Duration,
        /// The last failure seen.
        last: String,
    },
}

/// What the check will probe, for progress messages.
pub fn describe(check: &ReadyCheck, instance: &Instance) -> String {
    match check {
        ReadyCheck::None => "nothing (ready check disabled)".into(),
        ReadyCheck::Tcp { host, port, .. } => {
            format!(
                "{}:{port}",
                host.clone()
                    .or_else(|| address(instance))
                    .unwrap_or_else(|| "?".into())
            )
        }
        ReadyCheck::Command { command, .. } => format!("`{}`", substitute(command, instance)),
    }
}

/// Waits until `check` passes for `instance`, probing every `poll`.
pub async fn wait_ready(
    check: &ReadyCheck,
    instance: &Instance,
    poll: Duration,
) -> Result<(), ReadyError> {
    match check {
        ReadyCheck::None => Ok(()),
        ReadyCheck::Tcp {
            host,
            port,
            timeout: within,
        } => {
            let host = host
                .clone()
                .or_else(|| address(instance))
                .ok_or_else(|| ReadyError::NoAddress(instance.id.to_string()))?;
            let target = format!("{host}:{port}");
            let deadline = Instant::now() + *within;
            loop {
                let last = match timeout(CONNECT_TIMEOUT, TcpStream::connect(&target)).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
                };
                if Instant::now() + poll > deadline {
                    return Err(ReadyError::Timeout {
                        what: format!("TCP connect to {target}"),
                        within: *within,
                        last,
                    });
                }
                sleep(poll).await;
            }
        }
        ReadyCheck::Command {
            command,
            timeout: within,
        } => {
            let command = substitute(command, instance);
            let deadline = Instant::now() + *within;
            loop {
                let last = match Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .env_clear()
                    .envs(scrubbed_env(std::env::vars_os()))
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output()
                    .await
                {
                    Ok(out) if out.status.success() => return Ok(()),
                    // What the command printed is not repeated: it lands in
                    // the event log the API serves, and may hold secrets.
                    Ok(out) => format!(
                        "{} ({} bytes on stderr, not recorded)",
                        out.status,
                        out.stderr.len()
                    ),
                    Err(e) => format!("cannot run sh: {e}"),
                };
                if Instant::now() + poll > deadline {
                    // Nor is the command's text: it may carry a secret
                    // (a token on its command line), and errors become
                    // events the API serves and sinks are sent.
                    return Err(ReadyError::Timeout {
                        what: "the ready command (ready.command)".into(),
                        within: *within,
                        last,
                    });
                }
                sleep(poll).await;
            }
        }
    }
}

/// The environment a ready command runs with: the daemon's, without AWS
/// credentials and settings (`AWS_*`) or spotkeeper's own secrets
/// (`SPOTKEEPER_*`, the API token among them).
pub fn scrubbed_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.filter(|(k, _)| {
        let k = k.to_string_lossy().to_ascii_uppercase();
        !(k.starts_with("AWS_") || k.starts_with("SPOTKEEPER_"))
    })
    .collect()
}

fn address(instance: &Instance) -> Option<String> {
    instance
        .public_ip
        .clone()
        .or_else(|| instance.private_ip.clone())
}

fn substitute(command: &str, instance: &Instance) -> String {
    command
        .replace("{ip}", &address(instance).unwrap_or_default())
        .replace("{id}", instance.id.as_str())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_commands_get_no_aws_credentials_or_spotkeeper_secrets() {
        let env = [
            ("PATH", "/usr/bin"),
            ("AWS_SECRET_ACCESS_KEY", "s3cr3t"),
            ("aws_session_token", "t"),
            ("SPOTKEEPER_API_TOKEN", "0123456789abcdef"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let kept: Vec<String> = scrubbed_env(env.into_iter())
            .into_iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(kept, ["PATH", "HOME"]);
    }

    use super::*;
    use spotkeeper_cloud::{InstanceId, InstanceState, Market};

    fn inst() -> Instance {
        Instance {
            id: InstanceId::new("i-1"),
            state: InstanceState::Running,
            instance_type: "t3.micro".into(),
            zone: None,
            market: Market::Spot,
            spot_request_id: None,
            public_ip: Some("203.0.113.9".into()),
            private_ip: None,
            launched_at: None,
            image_id: None,
            subnet_id: None,
            vpc_id: None,
            tags: Default::default(),
        }
    }

    #[tokio::test]
    async fn tcp_check_passes_against_a_loopback_listener() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let check = ReadyCheck::Tcp {
            host: Some("127.0.0.1".into()),
            port,
            timeout: Duration::from_secs(5),
        };
        wait_ready(&check, &inst(), Duration::from_millis(50))
            .await
            .expect("ready");
    }

    #[tokio::test]
    async fn tcp_check_times_out_with_the_last_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        drop(l);
        let check = ReadyCheck::Tcp {
            host: Some("127.0.0.1".into()),
            port,
            timeout: Duration::from_millis(300),
        };
        let e = wait_ready(&check, &inst(), Duration::from_millis(50))
            .await
            .expect_err("refused");
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }

    #[tokio::test]
    async fn command_check_substitutes_id_and_ip_and_retries() {
        let dir = tempfile::tempdir().expect("dir");
        let marker = dir.path().join("m");
        // Fails the first time (creates the marker), passes the second.
        let cmd = format!(
            "test \"{{id}} {{ip}}\" = \"i-1 203.0.113.9\" && test -e {0} || {{ touch {0}; exit 1; }}",
            marker.display()
        );
        let check = ReadyCheck::Command {
            command: cmd,
            timeout: Duration::from_secs(5),
        };
        wait_ready(&check, &inst(), Duration::from_millis(20))
            .await
            .expect("ready on retry");
        let bad = ReadyCheck::Command {
            command: "echo nope >&2; exit 3".into(),
            timeout: Duration::from_millis(100),
        };
        let e = wait_ready(&bad, &inst(), Duration::from_millis(20))
            .await
            .expect_err("fails");
        let said = e.to_string();
        assert!(
            said.contains("the ready command") && said.contains("exit status: 3"),
            "{said}"
        );
        assert!(
            !said.contains("nope"),
            "neither its text nor its output: {said}"
        );
    }
}
