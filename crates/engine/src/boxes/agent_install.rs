//! `agent = true`: the daemon (or `up`) puts its own binary on the box's
//! instance at [`AGENT_PATH`], where the boot script's unit runs
//! `spotkeeper agent`, unless the instance has this version there already
//! (the image carries it, or an earlier settle put it). Nothing is fetched
//! from the internet by the instance.

use std::time::Duration;

use spotkeeper_cloud::{Instance, SshError};

use super::Ctx;
use crate::config::BoxSpec;
use crate::event_kind::EventKind;

/// Where the agent lives on the instance (the unit's `ExecStart`).
pub const AGENT_PATH: &str = "/usr/local/bin/spotkeeper";

/// How long copying the binary may take (tens of MB over the box's link).
const COPY_WITHIN: Duration = Duration::from_secs(5 * 60);

/// Installs the agent on `instance` when the box asks for it. A failure is
/// said (a note and a `hook-failed` event) and changes nothing else: the
/// box is up, and without the agent the daemon's hand-over waits for the
/// hook's deadline.
pub(super) async fn install_agent(ctx: &Ctx<'_>, spec: &BoxSpec, instance: &Instance) {
    if !spec.agent {
        return;
    }
    match install(spec, instance).await {
        Ok(None) => {}
        Ok(Some(note)) => ctx.progress.note(&note),
        Err(e) => {
            let what = format!("agent not installed on {}: {e}", instance.id);
            ctx.progress.note(&what);
            if let Err(e) = ctx
                .owned()
                .record_event(Some(&spec.name), EventKind::HookFailed, &what)
                .await
            {
                tracing::warn!("cannot record an event: {e}");
            }
        }
    }
}

async fn install(spec: &BoxSpec, instance: &Instance) -> Result<Option<String>, SshError> {
    let ssh = &spec.ssh;
    let address = ssh
        .address(instance.address())
        .ok_or_else(|| SshError::NoAddress(instance.id.to_string()))?;
    let ours = concat!("spotkeeper ", env!("CARGO_PKG_VERSION"));
    let probe = format!("uname -m; {AGENT_PATH} --version 2>/dev/null || true");
    let out = ssh.exec(&address, &probe, Duration::from_secs(60)).await?;
    let mut lines = out.stdout.lines().map(str::trim);
    let arch = lines.next().unwrap_or_default().to_owned();
    if lines.next() == Some(ours) {
        return Ok(None);
    }
    // This binary runs on the instance only if it is built for its machine.
    if arch != std::env::consts::ARCH {
        return Ok(Some(format!(
            "agent: {} is {arch:?}, this spotkeeper is built for {:?}; put spotkeeper at \
             {AGENT_PATH} in the box's image",
            instance.id,
            std::env::consts::ARCH
        )));
    }
    let exe = std::env::current_exe().map_err(|e| SshError::Spawn(format!("own binary: {e}")))?;
    // A name no one on the instance can take first.
    let remote = format!(
        "/tmp/spotkeeper-agent-{}",
        spotkeeper_cloud::model::random_token()
    );
    ssh.copy(&address, &exe, &remote, true, COPY_WITHIN).await?;
    let put = format!(
        "{{ install -m 0755 {remote} {AGENT_PATH} 2>/dev/null || sudo -n install -m 0755 {remote} {AGENT_PATH}; }}; \
         rc=$?; rm -f {remote}; exit $rc"
    );
    let out = ssh.exec(&address, &put, Duration::from_secs(60)).await?;
    if !out.success() {
        return Err(SshError::Connect {
            target: address,
            reason: format!(
                "installing {AGENT_PATH} exited {} (the SSH user needs root or sudo without a password)",
                out.status
            ),
        });
    }
    Ok(Some(format!(
        "agent: {ours} installed at {AGENT_PATH} on {}",
        instance.id
    )))
}
