//! `spotkeeper agent`: runs on the box's instance, watches the instance
//! metadata service for its own spot warning, and uses the two minutes
//! itself: runs the `on_interruption` hook, syncs and unmounts the data
//! volume, and tags the outcome on its instance (the protocol of
//! [`crate::hook`]), which the daemon reads instead of running the hook a
//! second time. It needs neither the daemon nor the queue: it works when
//! they are down, and it sees the warning a few seconds before EventBridge
//! delivers it.
//!
//! IMDSv2 only: every request carries a session token (AWS: "IMDSv2 uses
//! session-oriented requests": `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds`, then the token in
//! `X-aws-ec2-metadata-token`; an expired or missing token is answered 401).
//! The endpoint is `$AWS_EC2_METADATA_SERVICE_ENDPOINT` when set, as the AWS
//! SDKs read it, else the link-local address.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{AwsCloud, ClientConfig};
use tokio::time::Instant;

use crate::hook::{self, Outcome};

/// The metadata service when `$AWS_EC2_METADATA_SERVICE_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// How long a session token lives (seconds); it is renewed before it ends.
const TOKEN_TTL: u64 = 6 * 60 * 60;

/// What the agent does.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The metadata service.
    pub endpoint: String,
    /// The hook (`sh -c`), if any.
    pub command: Option<String>,
    /// Cut the hook after this long.
    pub timeout: Duration,
    /// The data volume's mount point, unmounted after the hook.
    pub mount: Option<PathBuf>,
    /// How often the metadata service is asked.
    pub poll: Duration,
    /// A file that records that the warning was handled: a restarted agent
    /// does not run the hook again.
    pub done_file: Option<PathBuf>,
}

/// The endpoint the AWS SDKs use: `$AWS_EC2_METADATA_SERVICE_ENDPOINT`, else
/// the link-local address.
pub fn endpoint_from_env() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// Why the agent cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The metadata service did not answer as it should.
    #[error("instance metadata service at {endpoint}: {what}")]
    Metadata {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        what: String,
    },
}

/// An IMDSv2 session.
struct Imds {
    http: reqwest::Client,
    endpoint: String,
    token: Option<(String, Instant)>,
}

impl Imds {
    fn new(endpoint: &str) -> Self {
        let http = crate::tls::http_client()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            http,
            endpoint: endpoint.to_owned(),
            token: None,
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> AgentError {
        AgentError::Metadata {
            endpoint: self.endpoint.clone(),
            what: what.to_string(),
        }
    }

    async fn token(&mut self) -> Result<String, AgentError> {
        if let Some((t, at)) = &self.token
            && at.elapsed() < Duration::from_secs(TOKEN_TTL - 60)
        {
            return Ok(t.clone());
        }
        let answer = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL.to_string(),
            )
            .send()
            .await
            .map_err(|e| self.fail(format!("no session token: {e}")))?;
        if !answer.status().is_success() {
            return Err(self.fail(format!("no session token: {}", answer.status())));
        }
        let token = answer.text().await.map_err(|e| self.fail(e))?;
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    /// `GET /latest/meta-data/PATH` with the token: `None` on 404 (nothing
    /// there, e.g. no warning yet). A 401 drops the token for the next try.
    async fn get(&mut self, path: &str) -> Result<Option<String>, AgentError> {
        let token = self.token().await?;
        let answer = self
            .http
            .get(format!("{}/latest/meta-data/{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(|e| self.fail(format!("{path}: {e}")))?;
        match answer.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED => {
                self.token = None;
                Err(self.fail(format!("{path}: the session token was refused (401)")))
            }
            s if s.is_success() => Ok(Some(answer.text().await.map_err(|e| self.fail(e))?)),
            s => Err(self.fail(format!("{path}: {s}"))),
        }
    }
}

/// `spot/instance-action`: `{"action": "terminate", "time": "…"}`, the time
/// being when the action happens.
#[derive(Debug, serde::Deserialize)]
struct InstanceAction {
    action: String,
    time: Option<String>,
}

/// When the warning was issued, from the action's time (two minutes before
/// it), as [`hook::warned_at`] believes it.
fn warned_at(action: &InstanceAction, now: SystemTime) -> SystemTime {
    let issued = action
        .time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.checked_sub(hook::WARNING_LEAD))
        .map(|t| humantime::format_rfc3339(t).to_string());
    hook::warned_at(issued.as_deref(), now)
}

/// Runs until the process is stopped: polls for the warning, and on the
/// first one handles it (once).
pub async fn run(settings: &AgentSettings) -> Result<(), AgentError> {
    let mut imds = Imds::new(&settings.endpoint);
    // Who we are: the first answers also prove the service is there.
    let (instance, region) = loop {
        match identity(&mut imds).await {
            Ok(found) => break found,
            Err(e) => {
                tracing::warn!("{e}; trying again");
                tokio::time::sleep(settings.poll).await;
            }
        }
    };
    tracing::info!(%instance, %region, "agent watching for a spot warning");
    let mut handled = settings.done_file.as_ref().is_some_and(|f| f.exists());
    let mut rebalance_seen = false;
    loop {
        if !handled {
            match imds.get("spot/instance-action").await {
                Ok(Some(body)) => {
                    handle(settings, &instance, &region, &body).await;
                    handled = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
        if !rebalance_seen
            && let Ok(Some(body)) = imds.get("events/recommendations/rebalance").await
        {
            tracing::warn!(
                "rebalance recommended ({}): the daemon decides",
                body.trim()
            );
            rebalance_seen = true;
        }
        tokio::time::sleep(settings.poll).await;
    }
}

async fn identity(imds: &mut Imds) -> Result<(String, String), AgentError> {
    let instance = imds
        .get("instance-id")
        .await?
        .ok_or_else(|| imds.fail("instance-id: not found"))?;
    let region = imds
        .get("placement/region")
        .await?
        .ok_or_else(|| imds.fail("placement/region: not found"))?;
    Ok((instance.trim().to_owned(), region.trim().to_owned()))
}

/// The warning is here: gate, hook, unmount, outcome.
async fn handle(settings: &AgentSettings, instance: &str, region: &str, body: &str) {
    let now = SystemTime::now();
    let action: InstanceAction = match serde_json::from_str(body) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("spot/instance-action is not what AWS sends ({e}); treated as now");
            InstanceAction {
                action: "terminate".into(),
                time: None,
            }
        }
    };
    tracing::warn!(action = %action.action, "spot interruption warning");
    if let Some(f) = &settings.done_file
        && let Err(e) = std::fs::write(f, body)
    {
        tracing::warn!("cannot write {}: {e}", f.display());
    }
    let until = hook::until(warned_at(&action, now), settings.timeout, now);
    let cloud = AwsCloud::connect(&ClientConfig {
        region: Some(region.to_owned()),
        ..ClientConfig::default()
    })
    .await;
    let tag = |tags: Vec<(String, String)>| {
        let cloud = cloud.as_ref();
        async move {
            let result = match cloud {
                Ok(c) => c
                    .tag(&[instance.to_owned()], &tags)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = result {
                // The daemon then waits for the deadline: later, not wrong.
                tracing::warn!("cannot tag {instance}: {e}");
            }
        }
    };
    tag(hook::gate_tags(until, settings.command.is_some())).await;
    let Some(command) = &settings.command else {
        release(settings).await;
        return;
    };
    let started = Instant::now();
    let outcome = run_hook(command, until).await;
    tracing::warn!(
        outcome = outcome.as_str(),
        seconds = started.elapsed().as_secs_f64(),
        "on_interruption ended"
    );
    release(settings).await;
    tag(vec![(
        hook::HOOK_TAG.to_owned(),
        outcome.as_str().to_owned(),
    )])
    .await;
}

/// Runs `command` with `sh -c` in a process group of its own, cut (the whole
/// group) at `until`.
async fn run_hook(command: &str, until: SystemTime) -> Outcome {
    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
    let mut child = match tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot run sh: {e}");
            return Outcome::Failed;
        }
    };
    match tokio::time::timeout(left, child.wait()).await {
        Ok(Ok(s)) if s.success() => Outcome::Done,
        Ok(_) => Outcome::Failed,
        Err(_) => {
            if let Some(pid) = child.id() {
                // The hook's children too: they may hold the volume busy.
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
            let _ = child.kill().await;
            Outcome::Timeout
        }
    }
}

/// Flushes and unmounts the data volume, so the detach finds it clean.
async fn release(settings: &AgentSettings) {
    let _ = tokio::process::Command::new("sync").status().await;
    let Some(mount) = &settings.mount else { return };
    match tokio::process::Command::new("umount")
        .arg(mount)
        .stdin(Stdio::null())
        .output()
        .await
    {
        Ok(o) if o.status.success() => tracing::info!("unmounted {}", mount.display()),
        Ok(o) => tracing::warn!(
            "umount {} failed: {}",
            mount.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!("cannot run umount: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warning_was_issued_two_minutes_before_the_action() {
        let now = humantime::parse_rfc3339("2026-12-05T10:00:10Z").expect("time");
        let action = InstanceAction {
            action: "terminate".into(),
            time: Some("2026-12-05T10:02:00Z".into()),
        };
        let issued = humantime::parse_rfc3339("2026-12-05T10:00:00Z").expect("time");
        assert_eq!(warned_at(&action, now), issued);
        let none = InstanceAction {
            action: "stop".into(),
            time: None,
        };
        assert_eq!(warned_at(&none, now), now);
    }
}
