//! The two-minute window on the instance: the `on_interruption` hook, and the
//! tags through which whoever runs it — the daemon over SSH, or
//! `spotkeeper agent` on the instance itself — tells everyone else when the
//! instance may be let go.
//!
//! The protocol, on the interrupted instance:
//! - `spotkeeper:hook-until` = Unix seconds: the hand-over (terminating the
//!   instance, moving its data volume, retiring it) waits for the hook until
//!   then, never longer;
//! - `spotkeeper:hook` = `running`, then `done`, `failed` or `timeout`: an
//!   outcome ends the wait at once.
//!
//! Tags, not the daemon's memory: they outlive a daemon's crash, every daemon
//! sharing the account reads them, and the agent writes them with the
//! instance's own role when the daemon or the queue is down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{CloudError, Instance, SshSettings};

/// The hook's state on the instance: `running`, `done`, `failed`, `timeout`.
pub const HOOK_TAG: &str = "spotkeeper:hook";
/// Until when (Unix seconds) the hand-over waits for the hook.
pub const UNTIL_TAG: &str = "spotkeeper:hook-until";

/// AWS: "a Spot Instance interruption notice is a warning that is issued two
/// minutes before Amazon EC2 stops or terminates your Spot Instance"
/// (EC2 User Guide, Spot Instance interruption notices).
pub const WARNING_LEAD: Duration = Duration::from_secs(120);

/// What the hand-over needs after the hook, inside the two minutes:
/// terminate the instance, wait for its volume to detach, attach it to the
/// replacement (EBS detach and attach each take seconds).
pub const MOVE_RESERVE: Duration = Duration::from_secs(20);

/// How the hook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited 0.
    Done,
    /// It exited otherwise, or could not be run.
    Failed,
    /// It was cut at its timeout.
    Timeout,
}

impl Outcome {
    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
        }
    }

    /// From a tag value; `None` for `running` or anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "done" => Some(Self::Done),
            "failed" => Some(Self::Failed),
            "timeout" => Some(Self::Timeout),
            _ => None,
        }
    }
}

/// Until when the hook may run, started at `now` for a warning issued at
/// `warned_at`: its own `timeout`, but never past the point where the volume
/// could no longer move inside the two minutes (and never before `now`).
pub fn until(warned_at: SystemTime, timeout: Duration, now: SystemTime) -> SystemTime {
    let latest = warned_at + WARNING_LEAD - MOVE_RESERVE;
    (now + timeout).min(latest).max(now)
}

/// When the warning was issued: the event's own time (RFC 3339), if it is
/// believable — not in the future, not older than the two minutes — else
/// `now` (a late or replayed message gives the hook no more time than a
/// fresh one would have).
pub fn warned_at(event_time: Option<&str>, now: SystemTime) -> SystemTime {
    event_time
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .filter(|t| *t <= now && now.duration_since(*t).unwrap_or_default() <= WARNING_LEAD)
        .unwrap_or(now)
}

/// Unix seconds, as the tag holds them, rounded up: the gate never lifts
/// before the hook's cut.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, ceil_secs)
}

/// Whole seconds, rounded up.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The tags that open the gate: the deadline, and `running` when the
/// writer runs the hook itself.
pub fn gate_tags(until: SystemTime, running: bool) -> Vec<(String, String)> {
    let mut tags = vec![(UNTIL_TAG.to_owned(), unix(until).to_string())];
    if running {
        tags.push((HOOK_TAG.to_owned(), "running".to_owned()));
    }
    tags
}

/// The deadline while `instance`'s hook holds its hand-over at `now`: a gate
/// is set, no outcome is tagged yet, and the deadline has not passed. A
/// deadline further off than a warning's two minutes was not set by a hook
/// runner (anyone who may tag the instance can write the tag): it holds
/// nothing, so no tag can keep an instance, or its volume, forever.
pub fn holds(instance: &Instance, now: SystemTime) -> Option<SystemTime> {
    if instance.tag(HOOK_TAG).and_then(Outcome::parse).is_some() {
        return None;
    }
    let until = UNIX_EPOCH + Duration::from_secs(instance.tag(UNTIL_TAG)?.parse().ok()?);
    (until > now && until <= now + WARNING_LEAD).then_some(until)
}

/// How often the hand-over looks at the instance again while it waits.
const POLL: Duration = Duration::from_millis(500);

/// Waits while the hook holds `instance` (re-reading it), and returns the
/// hook's outcome if one was tagged; returns at the deadline or when the
/// instance is gone, whichever comes first, and in any case within a
/// warning's two minutes (a tag pushed ever later holds no longer).
pub async fn wait(cloud: &dyn Cloud, instance: &Instance) -> Result<Option<Outcome>, CloudError> {
    let give_up = SystemTime::now() + WARNING_LEAD;
    let mut now_seen = instance.clone();
    while let Some(until) = holds(&now_seen, SystemTime::now()) {
        let left = until
            .min(give_up)
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(POLL)).await;
        match cloud.instance(&instance.id).await? {
            Some(i) if !i.state.is_gone() => now_seen = i,
            _ => return Ok(None),
        }
    }
    Ok(now_seen.tag(HOOK_TAG).and_then(Outcome::parse))
}

/// What running the hook came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// How it ended.
    pub outcome: Outcome,
    /// Its exit status, when it exited.
    pub status: Option<i32>,
    /// How long it took.
    pub took: Duration,
    /// Why it failed to run at all (SSH's words), when it did.
    pub error: Option<String>,
}

impl Ran {
    /// One line for the event log: status and duration, never the output
    /// (as for ready checks: it may hold secrets and lands in the API).
    pub fn describe(&self, instance: &str) -> String {
        let took = format!("{:.1} s", self.took.as_secs_f64());
        match (self.outcome, self.status, &self.error) {
            (Outcome::Done, _, _) => format!("on_interruption on {instance} exited 0 after {took}"),
            (Outcome::Timeout, _, _) => {
                format!("on_interruption on {instance} was cut at its timeout after {took}")
            }
            (Outcome::Failed, _, Some(e)) => {
                format!("on_interruption on {instance} could not run ({took}): {e}")
            }
            (Outcome::Failed, status, None) => format!(
                "on_interruption on {instance} exited {} after {took}",
                status.map_or("?".to_owned(), |s| s.to_string())
            ),
        }
    }
}

/// `timeout`'s exit status when it cut the command (coreutils and busybox).
const CUT: i32 = 124;

/// Runs `command` on `instance` over SSH, cut at `until`: on the instance by
/// `timeout` (so the hook stops there, not only the connection), and here a
/// few seconds later in case the instance no longer answers.
pub async fn run_over_ssh(
    ssh: &SshSettings,
    instance: &Instance,
    command: &str,
    until: SystemTime,
) -> Ran {
    let started = tokio::time::Instant::now();
    let left = until
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(Duration::from_secs(1));
    // Whole seconds, rounded up, as the gate's deadline is.
    let secs = ceil_secs(left);
    let remote = format!("timeout -k 5 {secs} sh -c {}", sh_quote(command));
    let address = ssh.address(instance.address());
    let result = match address {
        Some(a) => ssh.exec(&a, &remote, Duration::from_secs(secs + 5)).await,
        None => Err(spotkeeper_cloud::SshError::NoAddress(
            instance.id.to_string(),
        )),
    };
    let took = started.elapsed();
    match result {
        Ok(out) if out.status == 0 => Ran {
            outcome: Outcome::Done,
            status: Some(0),
            took,
            error: None,
        },
        Ok(out) if out.status == CUT || out.status == 128 + 9 => Ran {
            outcome: Outcome::Timeout,
            status: Some(out.status),
            took,
            error: None,
        },
        Ok(out) => Ran {
            outcome: Outcome::Failed,
            status: Some(out.status),
            took,
            error: None,
        },
        Err(spotkeeper_cloud::SshError::Timeout { .. }) => Ran {
            outcome: Outcome::Timeout,
            status: None,
            took,
            error: None,
        },
        Err(e) => Ran {
            outcome: Outcome::Failed,
            status: None,
            took,
            error: Some(e.to_string()),
        },
    }
}

/// `text` as one single-quoted POSIX shell word.
pub fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use spotkeeper_cloud::{InstanceId, InstanceState, Market};

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn inst(tags: &[(&str, &str)]) -> Instance {
        Instance {
            id: InstanceId::new("i-1"),
            state: InstanceState::Running,
            instance_type: "t3.micro".into(),
            zone: None,
            market: Market::Spot,
            public_ip: None,
            private_ip: None,
            launched_at: None,
            spot_request_id: None,
            image_id: None,
            subnet_id: None,
            vpc_id: None,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn the_hook_gets_its_timeout_but_never_eats_the_time_the_volume_needs() {
        // Warned at 1000: the volume must start moving by 1100.
        assert_eq!(until(at(1000), Duration::from_secs(30), at(1005)), at(1035));
        assert_eq!(until(at(1000), Duration::from_secs(90), at(1005)), at(1095));
        assert_eq!(
            until(at(1000), Duration::from_secs(100), at(1020)),
            at(1100)
        );
        // A message that arrives after the deadline gives no time at all.
        assert_eq!(until(at(1000), Duration::from_secs(90), at(1110)), at(1110));
    }

    #[test]
    fn the_warning_time_is_the_events_own_unless_it_is_unbelievable() {
        let now = humantime::parse_rfc3339("2026-12-05T10:00:30Z").expect("time");
        let warned = warned_at(Some("2026-12-05T10:00:00Z"), now);
        assert_eq!(
            now.duration_since(warned).expect("earlier"),
            Duration::from_secs(30)
        );
        // From the future, from long ago, or garbage: now.
        assert_eq!(warned_at(Some("2026-12-05T10:05:00Z"), now), now);
        assert_eq!(warned_at(Some("2026-12-05T09:00:00Z"), now), now);
        assert_eq!(warned_at(Some("yesterday"), now), now);
        assert_eq!(warned_at(None, now), now);
    }

    #[test]
    fn a_gate_holds_until_its_deadline_or_an_outcome() {
        let now = at(1000);
        assert_eq!(holds(&inst(&[]), now), None);
        assert_eq!(holds(&inst(&[(UNTIL_TAG, "1050")]), now), Some(at(1050)));
        assert_eq!(
            holds(&inst(&[(UNTIL_TAG, "1050"), (HOOK_TAG, "running")]), now),
            Some(at(1050))
        );
        assert_eq!(holds(&inst(&[(UNTIL_TAG, "990")]), now), None);
        for outcome in ["done", "failed", "timeout"] {
            assert_eq!(
                holds(&inst(&[(UNTIL_TAG, "1050"), (HOOK_TAG, outcome)]), now),
                None
            );
        }
        // A tag someone garbled opens nothing, nor one that would hold the
        // instance longer than any warning lasts.
        assert_eq!(holds(&inst(&[(UNTIL_TAG, "soon")]), now), None);
        assert_eq!(holds(&inst(&[(UNTIL_TAG, "1121")]), now), None);
        assert_eq!(holds(&inst(&[(UNTIL_TAG, "99999999999")]), now), None);
    }

    #[test]
    fn a_command_is_one_shell_word_whatever_its_quotes() {
        assert_eq!(sh_quote("echo 'hi' there"), r"'echo '\''hi'\'' there'");
    }
}
