//! Remote commands over SSH, through the system `ssh` client (OpenSSH).
//!
//! Why the system client and not an SSH library: it already does what users
//! rely on — their `~/.ssh/config`, agent, `ProxyJump` bastions, known_hosts
//! handling, hardware keys — and `spotkeeper ssh BOX` must hand a person an
//! interactive session anyway. Every call is bounded by a timeout here, not
//! only by ssh's own `ConnectTimeout`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::{Instant, sleep, timeout};

/// How to reach a box over SSH (config: `ssh = { user, key_file, port, host, jump }`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshSettings {
    /// Login user.
    pub user: String,
    /// Private key file; default: the agent and ssh's default keys.
    pub key_file: Option<PathBuf>,
    /// Port.
    pub port: u16,
    /// Address override (otherwise the instance's public, else private, IP).
    pub host: Option<String>,
    /// Jump host (`ProxyJump`), e.g. `bastion` or `user@host:port`.
    pub jump: Option<String>,
    /// known_hosts file; default: ssh's own. New hosts are accepted on first
    /// sight (`StrictHostKeyChecking=accept-new`), changed keys are refused.
    pub known_hosts: Option<PathBuf>,
    /// TCP connect and banner timeout.
    pub connect_timeout: Duration,
    /// Extra `-o` options, e.g. `"LogLevel=ERROR"`.
    pub options: Vec<String>,
}

impl Default for SshSettings {
    fn default() -> Self {
        Self {
            user: "ubuntu".into(),
            key_file: None,
            port: 22,
            host: None,
            jump: None,
            known_hosts: None,
            connect_timeout: Duration::from_secs(10),
            options: Vec::new(),
        }
    }
}

/// What a remote command printed and how it exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The remote exit status.
    pub status: i32,
}

impl ExecOutput {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// cloud-init's final verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloudInitStatus {
    /// Finished without errors.
    Done,
    /// Finished, with recoverable errors (cloud-init's "degraded done").
    Degraded(String),
    /// Finished with errors.
    Error(String),
}

/// Why an SSH operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    /// There is no address to connect to.
    #[error("no address to SSH to for {0}: it has no IP; set ssh.host")]
    NoAddress(String),
    /// The address or a setting would be read by ssh as an option.
    #[error("refusing SSH target {0:?}: it must not start with '-'")]
    BadTarget(String),
    /// The `ssh` program could not be started.
    #[error("cannot run ssh: {0} (install the OpenSSH client)")]
    Spawn(String),
    /// ssh could not connect or authenticate.
    #[error("SSH to {target} failed: {reason}")]
    Connect {
        /// `user@host:port`.
        target: String,
        /// ssh's own words.
        reason: String,
    },
    /// The operation did not finish in time.
    #[error("SSH to {target}: {what} did not finish within {}s", .after.as_secs())]
    Timeout {
        /// `user@host:port`.
        target: String,
        /// What was running.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// cloud-init is missing or answered something unreadable.
    #[error("cloud-init on {target}: {reason}")]
    CloudInit {
        /// `user@host:port`.
        target: String,
        /// What went wrong.
        reason: String,
    },
}

impl SshSettings {
    /// The address to connect to: `host`, else `fallback` (the instance's IP).
    pub fn address(&self, fallback: Option<&str>) -> Option<String> {
        self.host.clone().or_else(|| fallback.map(str::to_owned))
    }

    fn target(&self, address: &str) -> String {
        format!("{}@{}:{}", self.user, address, self.port)
    }

    /// The `ssh` arguments for a session with `address` (without a command).
    pub fn args(&self, address: &str) -> Result<Vec<String>, SshError> {
        self.check_target(address)?;
        let mut a: Vec<String> = vec!["-p".into(), self.port.to_string()];
        a.extend(self.options_args());
        a.push("-l".into());
        a.push(self.user.clone());
        a.push(address.to_owned());
        Ok(a)
    }

    /// The `-o` options and jump host both `ssh` and `scp` take.
    fn options_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut opt = |o: String| {
            a.push("-o".into());
            a.push(o);
        };
        opt(format!(
            "ConnectTimeout={}",
            self.connect_timeout.as_secs().max(1)
        ));
        opt("StrictHostKeyChecking=accept-new".into());
        opt("ServerAliveInterval=15".into());
        opt("ServerAliveCountMax=3".into());
        if let Some(k) = &self.known_hosts {
            opt(format!("UserKnownHostsFile={}", k.display()));
        }
        if let Some(key) = &self.key_file {
            opt(format!("IdentityFile={}", key.display()));
            opt("IdentitiesOnly=yes".into());
        }
        for o in &self.options {
            opt(o.clone());
        }
        if let Some(j) = &self.jump {
            a.push("-J".into());
            a.push(j.clone());
        }
        a
    }

    fn check_target(&self, address: &str) -> Result<(), SshError> {
        for value in [
            Some(address),
            Some(self.user.as_str()),
            self.jump.as_deref(),
        ]
        .into_iter()
        .flatten()
        {
            if value.starts_with('-') || value.is_empty() {
                return Err(SshError::BadTarget(value.to_owned()));
            }
        }
        Ok(())
    }

    /// Copies a file with the system `scp` (same port, key, known hosts,
    /// options and jump host as commands): `to_remote` uploads `local` to
    /// `remote`, else downloads `remote` to `local`.
    pub async fn copy(
        &self,
        address: &str,
        local: &std::path::Path,
        remote: &str,
        to_remote: bool,
        within: Duration,
    ) -> Result<(), SshError> {
        self.check_target(address)?;
        if remote.is_empty() || remote.starts_with('-') {
            return Err(SshError::BadTarget(remote.to_owned()));
        }
        let mut args: Vec<String> =
            vec!["-q".into(), "-B".into(), "-P".into(), self.port.to_string()];
        args.extend(self.options_args());
        let host = if address.contains(':') {
            format!("[{address}]")
        } else {
            address.to_owned()
        };
        let far = format!("{}@{host}:{remote}", self.user);
        let near = local.display().to_string();
        if to_remote {
            args.extend([near, far]);
        } else {
            args.extend([far, near]);
        }
        let target = self.target(address);
        let out = run_bounded("scp", &args, &target, &format!("copying {remote}"), within).await?;
        if out.status.success() {
            return Ok(());
        }
        let reason = last_words(&String::from_utf8_lossy(&out.stderr), "scp failed");
        Err(SshError::Connect { target, reason })
    }

    /// Runs `command` on `address` (non-interactive, `BatchMode`) and returns
    /// its output and remote exit status; ssh's own failures (exit 255:
    /// refused, unreachable, authentication) are errors.
    pub async fn exec(
        &self,
        address: &str,
        command: &str,
        within: Duration,
    ) -> Result<ExecOutput, SshError> {
        let mut args = self.args(address)?;
        let dest = args.pop().expect("args end with the destination");
        args.extend([
            "-o".into(),
            "BatchMode=yes".into(),
            "-T".into(),
            dest,
            command.to_owned(),
        ]);
        let target = self.target(address);
        let out = run_bounded("ssh", &args, &target, &format!("`{command}`"), within).await?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let status = out.status.code().unwrap_or(-1);
        if status == 255 {
            let reason = last_words(&stderr, "ssh exited 255");
            return Err(SshError::Connect { target, reason });
        }
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            status,
        })
    }

    /// Retries `true` until SSH works or `within` passes.
    pub async fn wait_for_ssh(&self, address: &str, within: Duration) -> Result<(), SshError> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let err = match self
                .exec(address, "true", left.max(Duration::from_secs(1)))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e @ (SshError::BadTarget(_) | SshError::Spawn(_))) => return Err(e),
                Err(e) => e,
            };
            if Instant::now() + Duration::from_secs(2) >= deadline {
                return Err(match err {
                    SshError::Connect { target, reason } => SshError::Connect {
                        target,
                        reason: format!("{reason} (still failing after {}s)", within.as_secs()),
                    },
                    other => other,
                });
            }
            sleep(Duration::from_secs(2)).await;
        }
    }

    /// Waits for cloud-init to finish (`cloud-init status --wait`, repeated
    /// while it reports it has not started or is still running) and returns
    /// its verdict.
    pub async fn wait_for_cloud_init(
        &self,
        address: &str,
        within: Duration,
    ) -> Result<CloudInitStatus, SshError> {
        let deadline = Instant::now() + within;
        let target = self.target(address);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let out = match self
                .exec(
                    address,
                    "cloud-init status --wait --long",
                    left.max(Duration::from_secs(1)),
                )
                .await
            {
                Err(SshError::Timeout { target, after, .. }) => {
                    return Err(SshError::Timeout {
                        target,
                        what: "cloud-init".into(),
                        after,
                    });
                }
                other => other?,
            };
            if out.status == 127 {
                return Err(SshError::CloudInit {
                    target,
                    reason: "cloud-init is not installed (exit 127)".into(),
                });
            }
            let status = out
                .stdout
                .lines()
                .find_map(|l| l.trim().strip_prefix("status:"))
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            let detail = out.stdout.trim().to_owned();
            match status.as_str() {
                "done" if out.status == 0 => return Ok(CloudInitStatus::Done),
                "done" | "degraded done" => return Ok(CloudInitStatus::Degraded(detail)),
                "error" => return Ok(CloudInitStatus::Error(detail)),
                "running" | "not run" | "not started" | "" if out.status != 1 => {}
                _ if out.status == 1 => return Ok(CloudInitStatus::Error(detail)),
                other => {
                    return Err(SshError::CloudInit {
                        target,
                        reason: format!("unexpected status {other:?} (exit {})", out.status),
                    });
                }
            }
            if Instant::now() + Duration::from_secs(2) >= deadline {
                return Err(SshError::Timeout {
                    target,
                    what: "cloud-init".into(),
                    after: within,
                });
            }
            sleep(Duration::from_secs(2)).await;
        }
    }
}

/// Runs `program` (ssh or scp) with no stdin, its output collected, killed
/// when `within` passes.
async fn run_bounded(
    program: &str,
    args: &[String],
    target: &str,
    what: &str,
    within: Duration,
) -> Result<std::process::Output, SshError> {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        // The error already says "cannot run ssh"; scp is named.
        .map_err(|e| {
            SshError::Spawn(if program == "ssh" {
                e.to_string()
            } else {
                format!("{program}: {e}")
            })
        })?;
    match timeout(within, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(SshError::Spawn(e.to_string())),
        Err(_) => Err(SshError::Timeout {
            target: target.to_owned(),
            what: what.to_owned(),
            after: within,
        }),
    }
}

/// What ssh or scp last said on stderr (not the known-hosts notice), else `fallback`.
fn last_words(stderr: &str, fallback: &str) -> String {
    stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !l.starts_with("Warning: Permanently added"))
        .unwrap_or(fallback)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_carry_port_key_jump_and_user() {
        let s = SshSettings {
            user: "ec2-user".into(),
            key_file: Some("/k/id".into()),
            port: 2222,
            jump: Some("bastion".into()),
            ..SshSettings::default()
        };
        let a = s.args("203.0.113.7").expect("args").join(" ");
        assert!(a.starts_with("-p 2222 "), "{a}");
        assert!(
            a.contains("-o IdentityFile=/k/id -o IdentitiesOnly=yes"),
            "{a}"
        );
        assert!(a.ends_with("-J bastion -l ec2-user 203.0.113.7"), "{a}");
    }

    #[test]
    fn option_lookalikes_are_refused() {
        assert_eq!(
            SshSettings::default().args("-oProxyCommand=x"),
            Err(SshError::BadTarget("-oProxyCommand=x".into()))
        );
        let s = SshSettings {
            jump: Some("-x".into()),
            ..SshSettings::default()
        };
        assert!(s.args("h").is_err());
    }
}
