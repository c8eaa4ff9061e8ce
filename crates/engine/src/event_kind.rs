//! Every kind of event spotkeeper records in its event log, in one place:
//! what the store writes, what `[[notify]] events` may name (an unknown kind
//! is a config error, not a sink that silently hears nothing), what the API
//! and the dashboard filter by. A kind's name is stable: it is stored, sent
//! to webhooks and written in users' configs.

use std::fmt;
use std::str::FromStr;

macro_rules! kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// A kind of recorded event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventKind {
            $( $(#[$doc])* $variant, )*
        }

        impl EventKind {
            /// Every kind, in the order above.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            /// Its stable name (`replace-failed`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

kinds! {
    // The warnings and notices AWS sends (a pool's instance; a box's are
    // acted on and recorded as what was done).
    /// A spot interruption warning.
    SpotInterruption = "spot-interruption",
    /// A rebalance recommendation.
    Rebalance = "rebalance",
    /// An instance state change.
    StateChange = "state-change",
    /// An AWS Health scheduled change (retirement, maintenance).
    ScheduledChange = "scheduled-change",

    // Boxes.
    /// `up`, a daemon or a pool launched instances.
    Launch = "launch",
    /// A box's instance was replaced.
    Replaced = "replaced",
    /// A box's replacement failed (said once per kind of failure).
    ReplaceFailed = "replace-failed",
    /// A launch failed.
    LaunchFailed = "launch-failed",
    /// A box went to on-demand for want of spot.
    Fallback = "fallback",
    /// A box on on-demand went back to spot.
    BackToSpot = "back-to-spot",
    /// A box's spot price rose over its ceiling.
    OverCeiling = "over-ceiling",
    /// A box's old instance was retired after its replacement came up.
    Retired = "retired",
    /// Retiring an old instance failed.
    RetireFailed = "retire-failed",
    /// A box's volume or DNS record was put right.
    Healed = "healed",
    /// Putting a box's volume or DNS record right failed.
    HealFailed = "heal-failed",
    /// An image of a box was made.
    Image = "image",
    /// Making an image of a box failed.
    ImageFailed = "image-failed",
    /// A second live instance of a box was terminated.
    DuplicateTerminated = "duplicate-terminated",
    /// A stale spot request of a box was cancelled.
    StaleRequest = "stale-request",
    /// A box was stopped.
    Stop = "stop",
    /// A stop was asked through the API.
    StopRequested = "stop-requested",
    /// An instance marked stopped whose termination had failed was terminated.
    StopFinished = "stop-finished",
    /// A stop job failed this time (it is tried again).
    StopFailed = "stop-failed",
    /// A box or pool was registered through the API.
    Registered = "registered",
    /// A pool registered through the API was changed.
    Updated = "updated",
    /// A box's DNS record was set.
    Dns = "dns",
    /// A box's `on_interruption` hook ran on the warned instance (exit 0).
    Hook = "hook",
    /// The hook failed, timed out, or could not be started.
    HookFailed = "hook-failed",
    /// A drill: its warning sent, and its verdict.
    Drill = "drill",
    /// A box's data volume was copied to its other regions.
    Replicated = "replicated",
    /// Copying a box's data volume to another region failed.
    ReplicateFailed = "replicate-failed",
    /// A box left its home region for another (with its data's age).
    RegionFailover = "region-failover",
    /// A box came back to its home region (with the data written away).
    RegionReturn = "region-return",
    /// A move between regions failed or cannot be made (said once per reason).
    FailoverFailed = "failover-failed",
    /// A managed box is in neither the config nor the store.
    UnknownBox = "unknown-box",
    /// A registered box's stored spec does not parse.
    BadBox = "bad-box",
    /// A step of a pass for a box failed.
    StepFailed = "step-failed",

    // Pools.
    /// A pool cancelled open spot requests.
    Cancel = "cancel",
    /// A pool terminated instances it had too many of.
    ScaleDown = "scale-down",
    /// A launch left open by a crash failed to resume.
    ResumeFailed = "resume-failed",
    /// An offering had no capacity.
    NoCapacity = "no-capacity",
    /// A quota was reached.
    Quota = "quota",
    /// AWS refused a call for want of permission.
    Unauthorized = "unauthorized",
    /// A pool's demand could not be read (the pool holds).
    DemandFailed = "demand-failed",
    /// A pool was deleted.
    Deleted = "deleted",
    /// A pool's stored spec does not parse.
    BadPool = "bad-pool",
    /// A pool is known to no config and no registration.
    UnknownPool = "unknown-pool",
    /// Instances of deleted pools were collected.
    Orphans = "orphans",

    // The daemon.
    /// A pass failed (said once per kind of failure).
    PassFailed = "pass-failed",
    /// AWS does not answer.
    AwsUnreachable = "aws-unreachable",
    /// AWS answers again.
    AwsReachable = "aws-reachable",
    /// A daemon took leases.
    LeasesTaken = "leases-taken",
    /// A daemon gave leases back.
    LeasesReleased = "leases-released",
    /// A daemon took over a silent one's lease.
    LeaseTakeover = "lease-takeover",
    /// A daemon stopped.
    DaemonStopped = "daemon-stopped",
    /// A daemon stopped a step because it no longer held the lease.
    Fenced = "fenced",
    /// A daemon's config is older than the newest one recorded.
    ConfigBehind = "config-behind",
    /// Daemons of another owner use the same database.
    OwnerMismatch = "owner-mismatch",
    /// An event from another account was ignored.
    ForeignAccount = "foreign-account",
    /// A message that is not an event spotkeeper handles.
    Garbage = "garbage",
    /// An event delivered again.
    Duplicate = "duplicate",
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no event kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKind(pub String);

impl fmt::Display for UnknownKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an event kind; the kinds are ", self.0)?;
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        f.write_str(&names.join(", "))
    }
}

impl std::error::Error for UnknownKind {}

impl FromStr for EventKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_name_that_reads_back() {
        let mut seen = std::collections::HashSet::new();
        for k in EventKind::ALL {
            assert!(seen.insert(k.as_str()), "{k} named twice");
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(*k));
            assert!(
                k.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-'),
                "{k}"
            );
        }
        // The README lists them for `[[notify]] events`: all, and no other.
        let readme = include_str!("../../../README.md");
        let from = readme
            .find("`events` names kinds from one list")
            .expect("the list");
        let to = from
            + readme[from..]
                .find("A webhook with a secret")
                .expect("its end");
        let listed: std::collections::BTreeSet<&str> = readme[from..to]
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
            .filter(|w| *w != "events")
            .collect();
        let all: std::collections::BTreeSet<&str> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(listed, all, "README's list of event kinds");
        let e = "replace-faild".parse::<EventKind>().expect_err("a typo");
        assert!(e.to_string().contains("replace-failed"), "{e}");
    }
}
