//! `spotkeeper drill BOX`: a rehearsal of the interruption. A spot warning
//! shaped exactly like EventBridge's ("EC2 Spot Instance Interruption
//! Warning", or a rebalance recommendation) for the box's live instance goes
//! into the box's own queue; the daemon cannot tell it from AWS's and
//! recovers the box as it would. The drill follows the recovery step by step
//! and judges it against the box's `slo = { recover_within }`.
//!
//! A drill is marked by its event id ([`DRILL_PREFIX`]): the daemon says
//! "(drill)" in what it records, and the drill's verdict is an event of its
//! own (`drill`).

use std::time::Duration;

use serde::Serialize;

/// Event ids of drills start with this.
pub const DRILL_PREFIX: &str = "spotkeeper-drill-";

/// Whether an event id is a drill's.
pub fn is_drill(event_id: &str) -> bool {
    event_id.starts_with(DRILL_PREFIX)
}

/// The warning (or rebalance recommendation) for `instance`, as EventBridge
/// delivers it to SQS (the EC2 User Guide's example events).
pub fn warning_event(
    id: &str,
    instance: &str,
    region: &str,
    account: Option<&str>,
    time: &str,
    rebalance: bool,
) -> String {
    let account = account.unwrap_or("000000000000");
    let arn = format!("arn:aws:ec2:{region}:{account}:instance/{instance}");
    let (detail_type, detail) = if rebalance {
        (
            "EC2 Instance Rebalance Recommendation",
            serde_json::json!({ "instance-id": instance }),
        )
    } else {
        (
            "EC2 Spot Instance Interruption Warning",
            serde_json::json!({ "instance-id": instance, "instance-action": "terminate" }),
        )
    };
    serde_json::json!({
        "version": "0",
        "id": id,
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": account,
        "time": time,
        "region": region,
        "resources": [arn],
        "detail": detail,
    })
    .to_string()
}

/// A drill's warning, ready to send: its event id, its body, and what it is
/// in words (for the event log).
#[derive(Debug, Clone, PartialEq)]
pub struct Drill {
    /// The event id ([`DRILL_PREFIX`] and a fresh token).
    pub id: String,
    /// The EventBridge-shaped message ([`warning_event`]), issued now.
    pub body: String,
    /// "spot interruption warning" or "rebalance recommendation".
    pub what: &'static str,
}

impl Drill {
    /// A new drill of `instance` in `region`, for the queue of `account`.
    pub fn new(instance: &str, region: &str, account: Option<&str>, rebalance: bool) -> Self {
        let id = format!("{DRILL_PREFIX}{}", spotkeeper_cloud::model::random_token());
        let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let body = warning_event(&id, instance, region, account, &time, rebalance);
        let what = if rebalance {
            "rebalance recommendation"
        } else {
            "spot interruption warning"
        };
        Self { id, body, what }
    }
}

/// Checks `--fis`'s role: an IAM role's ARN (FIS assumes it). Returns a
/// word of warning when its name lacks [`crate::policy::FIS_ROLE_PREFIX`]
/// (the policy `spotkeeper iam-policy` prints passes no other role to FIS).
pub fn fis_role(arn: &str) -> Result<Option<String>, String> {
    let bad = || {
        format!(
            "--fis {arn:?}: not an IAM role's ARN (arn:aws:iam::123456789012:role/{}-spot)",
            crate::policy::FIS_ROLE_PREFIX
        )
    };
    let mut parts = arn.splitn(6, ':');
    let (arn_word, partition, service, region, account, resource) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next().unwrap_or_default(),
    );
    let account_ok =
        account.is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()));
    let name = resource
        .strip_prefix("role/")
        .map(|r| r.rsplit('/').next().unwrap_or(r));
    let name_ok = name.is_some_and(|n| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
    });
    if arn_word != Some("arn")
        || !partition.is_some_and(|p| p.starts_with("aws"))
        || service != Some("iam")
        || region != Some("")
        || !account_ok
        || !name_ok
    {
        return Err(bad());
    }
    Ok((!name
        .unwrap_or_default()
        .starts_with(crate::policy::FIS_ROLE_PREFIX))
    .then(|| {
        format!(
            "the role's name does not start with {}: the IAM policy `spotkeeper iam-policy` prints \
             does not let spotkeeper pass it to FIS",
            crate::policy::FIS_ROLE_PREFIX
        )
    }))
}

/// The ARN FIS targets for `instance` (the account from the event queue's URL).
pub fn instance_arn(region: &str, account: &str, instance: &str) -> String {
    format!("arn:aws:ec2:{region}:{account}:instance/{instance}")
}

/// One step of a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The daemon launched the replacement.
    Requested,
    /// The replacement runs.
    Running,
    /// The box's volumes are attached to it.
    Volumes,
    /// Its ready check passed and it is settled (the daemon's `replaced`).
    Ready,
    /// The DNS record (or Elastic IP) points at it.
    Address,
    /// The `on_interruption` hook on the interrupted instance ended.
    Hook,
    /// The interrupted instance is shutting down or gone.
    OldGone,
}

impl Step {
    /// Every step, in the order a recovery usually goes.
    pub const ALL: [Step; 7] = [
        Step::Requested,
        Step::Running,
        Step::Volumes,
        Step::Ready,
        Step::Address,
        Step::Hook,
        Step::OldGone,
    ];

    /// What it says in the timeline.
    pub fn describe(self) -> &'static str {
        match self {
            Step::Requested => "replacement requested",
            Step::Running => "replacement running",
            Step::Volumes => "volumes attached",
            Step::Ready => "ready",
            Step::Address => "DNS/Elastic IP moved",
            Step::Hook => "on_interruption hook ended",
            Step::OldGone => "old instance gone",
        }
    }

    /// Whether the box counts as recovered only after this step (the old
    /// instance's hook and its going are the old instance's part, not the
    /// box's availability).
    pub fn counts_for_recovery(self) -> bool {
        !matches!(self, Step::Hook | Step::OldGone)
    }
}

/// What the drill saw: each applicable step with when it was first seen
/// (since the warning was sent), `None` while not seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    /// The steps that apply to the box, in [`Step::ALL`] order.
    pub steps: Vec<(Step, Option<Duration>)>,
}

impl Timeline {
    /// The steps that apply: volumes only with volumes, the address only
    /// with DNS or an Elastic IP, the hook only with `on_interruption`.
    pub fn new(volumes: bool, address: bool, hook: bool) -> Self {
        let steps = Step::ALL
            .iter()
            .filter(|s| match s {
                Step::Volumes => volumes,
                Step::Address => address,
                Step::Hook => hook,
                _ => true,
            })
            .map(|s| (*s, None))
            .collect();
        Self { steps }
    }

    /// Records `step` at `at` unless it was seen before.
    pub fn saw(&mut self, step: Step, at: Duration) {
        if let Some((_, when)) = self.steps.iter_mut().find(|(s, _)| *s == step)
            && when.is_none()
        {
            *when = Some(at);
        }
    }

    /// Whether `step` was seen.
    pub fn seen(&self, step: Step) -> bool {
        self.steps.iter().any(|(s, w)| *s == step && w.is_some())
    }

    /// Whether every step was seen.
    pub fn complete(&self) -> bool {
        self.steps.iter().all(|(_, w)| w.is_some())
    }

    /// When the box was back: the last of the steps that count, once all
    /// of them were seen.
    pub fn recovered_after(&self) -> Option<Duration> {
        self.steps
            .iter()
            .filter(|(s, _)| s.counts_for_recovery())
            .map(|(_, w)| *w)
            .try_fold(Duration::ZERO, |acc, w| w.map(|w| acc.max(w)))
    }

    /// The verdict against `slo` (recover within).
    pub fn verdict(&self, slo: Option<Duration>) -> Verdict {
        match (self.recovered_after(), slo) {
            (Some(after), None) => Verdict::Recovered { after },
            (Some(after), Some(within)) if after <= within => Verdict::Within { after, within },
            (_, within) => {
                // The first step that counts and came late, or never.
                let late = self
                    .steps
                    .iter()
                    .filter(|(s, _)| s.counts_for_recovery())
                    .find(|(_, w)| match (w, within) {
                        (None, _) => true,
                        (Some(w), Some(within)) => *w > within,
                        (Some(_), None) => false,
                    })
                    .map_or(Step::Ready, |(s, _)| *s);
                Verdict::Late {
                    step: late,
                    within,
                    after: self.recovered_after(),
                }
            }
        }
    }
}

/// How the drill went.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Recovered; the box has no SLO.
    Recovered {
        /// How long it took.
        after: Duration,
    },
    /// Recovered within the SLO.
    Within {
        /// How long it took.
        after: Duration,
        /// The SLO.
        within: Duration,
    },
    /// Not recovered within the SLO (or at all, within the drill's wait).
    Late {
        /// The first step that was late or never came.
        step: Step,
        /// The SLO, if any.
        within: Option<Duration>,
        /// How long the recovery took, if it completed.
        after: Option<Duration>,
    },
}

impl Verdict {
    /// Whether the drill passed.
    pub fn passed(&self) -> bool {
        !matches!(self, Verdict::Late { .. })
    }

    /// One line for the person and the event log.
    pub fn describe(&self) -> String {
        let secs = |d: &Duration| format!("{:.1} s", d.as_secs_f64());
        let slo = |d: &Duration| humantime::format_duration(*d).to_string();
        match self {
            Verdict::Recovered { after } => format!("recovered in {} (no slo set)", secs(after)),
            Verdict::Within { after, within } => {
                format!(
                    "recovered in {}, within the slo of {}: pass",
                    secs(after),
                    slo(within)
                )
            }
            Verdict::Late {
                step,
                within,
                after,
            } => {
                let how = after.map_or("did not recover".to_owned(), |a| {
                    format!("recovered in {}", secs(&a))
                });
                let limit = within.map_or(String::new(), |w| format!(" the slo of {},", slo(&w)));
                format!(
                    "{how}: late against{limit} at \"{}\": fail",
                    step.describe()
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fis_role_is_an_iam_roles_arn_and_its_name_is_checked_against_the_policy() {
        assert_eq!(
            fis_role("arn:aws:iam::123456789012:role/spotkeeper-fis-spot"),
            Ok(None)
        );
        assert_eq!(
            fis_role("arn:aws:iam::123456789012:role/drills/spotkeeper-fis"),
            Ok(None)
        );
        assert!(
            fis_role("arn:aws:iam::123456789012:role/FisSpot")
                .expect("a role")
                .is_some_and(|w| w.contains("spotkeeper-fis"))
        );
        for bad in [
            "",
            "spotkeeper-fis",
            "arn:aws:iam::123456789012:user/spotkeeper-fis",
            "arn:aws:iam::12345:role/spotkeeper-fis",
            "arn:aws:iam:us-east-1:123456789012:role/spotkeeper-fis",
            "arn:aws:s3::123456789012:role/spotkeeper-fis",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role/a b",
        ] {
            let e = fis_role(bad).expect_err(bad);
            assert!(e.starts_with("--fis"), "{e}");
        }
        assert_eq!(
            instance_arn("us-east-1", "123456789012", "i-0abc"),
            "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc"
        );
    }

    fn s(n: u64) -> Duration {
        Duration::from_millis(n * 100)
    }

    fn full(times: [u64; 7]) -> Timeline {
        let mut t = Timeline::new(true, true, true);
        for (step, at) in Step::ALL.iter().zip(times) {
            t.saw(*step, s(at));
        }
        t
    }

    #[test]
    fn the_event_is_shaped_like_eventbridges_and_parses_as_a_warning() {
        let body = warning_event(
            "spotkeeper-drill-1",
            "i-0123456789abcdef0",
            "us-east-1",
            Some("123456789012"),
            "2026-12-05T10:00:00Z",
            false,
        );
        let e = crate::events::parse(&body).expect("parses");
        assert_eq!(e.id, "spotkeeper-drill-1");
        assert_eq!(e.account.as_deref(), Some("123456789012"));
        assert!(matches!(
            e.kind,
            crate::events::Notice::SpotInterruption { .. }
        ));
        let rebalance = warning_event("x", "i-0123456789abcdef0", "us-east-1", None, "t", true);
        assert!(matches!(
            crate::events::parse(&rebalance).expect("parses").kind,
            crate::events::Notice::Rebalance { .. }
        ));
    }

    #[test]
    fn recovery_is_the_last_step_that_counts_and_the_slo_judges_it() {
        // The hook (at 6.0 s) and the old instance gone (at 9.0 s) do not count.
        let t = full([2, 5, 20, 30, 31, 60, 90]);
        assert_eq!(t.recovered_after(), Some(s(31)));
        assert!(t.verdict(Some(Duration::from_secs(4))).passed());
        assert_eq!(
            t.verdict(Some(Duration::from_secs(3))),
            Verdict::Late {
                step: Step::Address,
                within: Some(Duration::from_secs(3)),
                after: Some(s(31)),
            }
        );
        assert_eq!(t.verdict(None), Verdict::Recovered { after: s(31) });
        // The first late step is named.
        assert!(matches!(
            t.verdict(Some(Duration::from_secs(1))),
            Verdict::Late {
                step: Step::Volumes,
                ..
            }
        ));
    }

    #[test]
    fn a_step_never_seen_fails_the_drill_and_is_named() {
        let mut t = Timeline::new(false, false, false);
        t.saw(Step::Requested, s(1));
        t.saw(Step::Running, s(2));
        assert_eq!(t.recovered_after(), None);
        let v = t.verdict(Some(Duration::from_secs(180)));
        assert_eq!(
            v,
            Verdict::Late {
                step: Step::Ready,
                within: Some(Duration::from_secs(180)),
                after: None
            }
        );
        assert!(v.describe().contains("did not recover"), "{}", v.describe());
        // Steps that do not apply are not waited for.
        t.saw(Step::Ready, s(3));
        t.saw(Step::OldGone, s(4));
        assert!(t.complete());
        assert!(t.verdict(None).passed());
    }

    #[test]
    fn a_step_is_timed_once() {
        let mut t = Timeline::new(false, false, false);
        t.saw(Step::Running, s(2));
        t.saw(Step::Running, s(9));
        assert_eq!(t.steps[1], (Step::Running, Some(s(2))));
    }
}
