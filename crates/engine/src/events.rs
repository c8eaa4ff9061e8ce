//! EventBridge events as they arrive in an SQS message body (the body is the
//! event JSON itself), parsed into a typed enum keyed by (source,
//! detail-type). The instance id is read from `detail.instance-id` (or the
//! Health event's affected entities), never from the ARN, and `account` is
//! optional: some real deliveries and the emulator omit it.

use crate::event_kind::EventKind;
use serde_json::Value;
use spotkeeper_cloud::{InstanceId, InstanceState};

/// SQS caps a message at 256 KiB; anything larger is not from EventBridge.
pub const MAX_BODY: usize = 256 * 1024;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// EventBridge's event id: deliveries are at-least-once, so duplicates are dropped by it.
    pub id: String,
    /// When AWS emitted it (RFC 3339), as given.
    pub time: Option<String>,
    /// The region, as given.
    pub region: Option<String>,
    /// The account, when present.
    pub account: Option<String>,
    /// What happened.
    pub kind: Notice,
}

/// What an event says.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// "EC2 Spot Instance Interruption Warning": about two minutes left.
    SpotInterruption {
        /// The instance.
        instance: InstanceId,
        /// `terminate`, `stop` or `hibernate`.
        action: String,
    },
    /// "EC2 Instance Rebalance Recommendation": elevated risk of interruption.
    Rebalance {
        /// The instance.
        instance: InstanceId,
    },
    /// "EC2 Instance State-change Notification".
    StateChange {
        /// The instance.
        instance: InstanceId,
        /// Its new state.
        state: InstanceState,
    },
    /// An AWS Health scheduled change for EC2 (retirement, maintenance).
    ScheduledChange {
        /// e.g. `AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED`.
        type_code: String,
        /// The instances affected.
        instances: Vec<InstanceId>,
    },
}

impl Notice {
    /// Every instance the event concerns.
    pub fn instances(&self) -> Vec<&InstanceId> {
        match self {
            Notice::SpotInterruption { instance, .. }
            | Notice::Rebalance { instance }
            | Notice::StateChange { instance, .. } => vec![instance],
            Notice::ScheduledChange { instances, .. } => instances.iter().collect(),
        }
    }

    /// The kind of event it is recorded as.
    pub fn event_kind(&self) -> EventKind {
        match self {
            Notice::SpotInterruption { .. } => EventKind::SpotInterruption,
            Notice::Rebalance { .. } => EventKind::Rebalance,
            Notice::StateChange { .. } => EventKind::StateChange,
            Notice::ScheduledChange { .. } => EventKind::ScheduledChange,
        }
    }

    /// A short stable name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        self.event_kind().as_str()
    }
}

/// Why a message body is not an event spotkeeper acts on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Too large to be an event.
    #[error("message body is {0} bytes, over the 256 KiB an SQS message can hold")]
    TooLarge(usize),
    /// Not JSON, or not an object.
    #[error("message body is not a JSON object: {0}")]
    NotJson(String),
    /// A required field is missing or of the wrong type.
    #[error("event lacks {0}")]
    Missing(&'static str),
    /// A well-formed event of a kind spotkeeper does not handle.
    #[error("unhandled event: source {event_source:?}, detail-type {detail_type:?}")]
    Unhandled {
        /// `source`.
        event_source: String,
        /// `detail-type`.
        detail_type: String,
    },
    /// An instance id that is not one.
    #[error("{0:?} is not an instance id")]
    BadInstanceId(String),
}

fn instance_id(s: &str) -> Result<InstanceId, EventError> {
    let ok = s
        .strip_prefix("i-")
        .is_some_and(|h| (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(InstanceId::new(s))
    } else {
        Err(EventError::BadInstanceId(s.chars().take(40).collect()))
    }
}

fn text<'a>(v: &'a Value, key: &'static str) -> Result<&'a str, EventError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or(EventError::Missing(key))
}

/// The instances an AWS Health event names: its affected entities, else
/// its resources' ARNs.
fn affected_instances(v: &Value, detail: &Value) -> Vec<InstanceId> {
    let mut instances = Vec::new();
    let entities = detail
        .get("affectedEntities")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for e in entities.filter_map(|e| e.get("entityValue").and_then(Value::as_str)) {
        if let Ok(id) = instance_id(e) {
            instances.push(id);
        }
    }
    if instances.is_empty() {
        for r in v
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Ok(id) = instance_id(r.rsplit('/').next().unwrap_or(r)) {
                instances.push(id);
            }
        }
    }
    instances
}

/// Parses an SQS message body.
pub fn parse(body: &str) -> Result<Event, EventError> {
    if body.len() > MAX_BODY {
        return Err(EventError::TooLarge(body.len()));
    }
    let v: Value = serde_json::from_str(body).map_err(|e| EventError::NotJson(e.to_string()))?;
    if !v.is_object() {
        return Err(EventError::NotJson(
            "a JSON value that is not an object".into(),
        ));
    }
    let id = text(&v, "id")?.to_owned();
    let source = text(&v, "source")?;
    let detail_type = text(&v, "detail-type")?;
    let detail = v
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or(EventError::Missing("detail"))?;
    let instance =
        || -> Result<InstanceId, EventError> { instance_id(text(detail, "instance-id")?) };
    let kind = match (source, detail_type) {
        ("aws.ec2", "EC2 Spot Instance Interruption Warning") => Notice::SpotInterruption {
            instance: instance()?,
            action: detail
                .get("instance-action")
                .and_then(Value::as_str)
                .unwrap_or("terminate")
                .to_owned(),
        },
        ("aws.ec2", "EC2 Instance Rebalance Recommendation") => Notice::Rebalance {
            instance: instance()?,
        },
        ("aws.ec2", "EC2 Instance State-change Notification") => {
            let state = text(detail, "state")?;
            Notice::StateChange {
                instance: instance()?,
                state: InstanceState::parse(state)
                    .ok_or(EventError::Missing("a known detail.state"))?,
            }
        }
        ("aws.health", "AWS Health Event")
            if detail.get("service").and_then(Value::as_str) == Some("EC2")
                && detail.get("eventTypeCategory").and_then(Value::as_str)
                    == Some("scheduledChange") =>
        {
            let instances = affected_instances(&v, detail);
            if instances.is_empty() {
                return Err(EventError::Missing("an affected instance"));
            }
            Notice::ScheduledChange {
                type_code: text(detail, "eventTypeCode")
                    .unwrap_or("unknown")
                    .to_owned(),
                instances,
            }
        }
        _ => {
            return Err(EventError::Unhandled {
                event_source: source.chars().take(64).collect(),
                detail_type: detail_type.chars().take(128).collect(),
            });
        }
    };
    Ok(Event {
        id,
        time: v.get("time").and_then(Value::as_str).map(str::to_owned),
        region: v.get("region").and_then(Value::as_str).map(str::to_owned),
        account: v.get("account").and_then(Value::as_str).map(str::to_owned),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/events")
            .join(name);
        std::fs::read_to_string(path).expect("fixture")
    }

    #[test]
    fn the_four_sample_events_parse() {
        let i = InstanceId::new("i-1234567890abcdef0");
        let e = parse(&fixture("spot-interruption-warning.json")).expect("spot");
        assert_eq!(e.id, "12345678-1234-1234-1234-123456789012");
        assert_eq!(
            e.kind,
            Notice::SpotInterruption {
                instance: i.clone(),
                action: "terminate".into()
            }
        );
        assert_eq!(
            parse(&fixture("rebalance-recommendation.json"))
                .expect("rebalance")
                .kind,
            Notice::Rebalance {
                instance: i.clone()
            }
        );
        assert_eq!(
            parse(&fixture("state-change-terminated.json"))
                .expect("state")
                .kind,
            Notice::StateChange {
                instance: i.clone(),
                state: InstanceState::Terminated
            }
        );
        let h = parse(&fixture("health-scheduled-change.json")).expect("health");
        assert_eq!(
            h.kind,
            Notice::ScheduledChange {
                type_code: "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(),
                instances: vec![i]
            }
        );
    }

    #[test]
    fn account_is_optional_and_the_arn_is_never_needed() {
        let body = fixture("spot-interruption-warning.json")
            .replace("\"account\": \"123456789012\",", "")
            .replace(
                "arn:aws:ec2:us-east-1:123456789012:instance/i-1234567890abcdef0",
                "arn:aws:ec2:us-east-1b:instance/i-1234567890abcdef0",
            );
        let e = parse(&body).expect("parses");
        assert_eq!(e.account, None);
        assert_eq!(
            e.kind.instances(),
            vec![&InstanceId::new("i-1234567890abcdef0")]
        );
    }

    #[test]
    fn garbage_is_a_clear_error_never_a_panic() {
        assert!(matches!(parse("not json"), Err(EventError::NotJson(_))));
        assert!(matches!(parse("[1,2]"), Err(EventError::NotJson(_))));
        assert_eq!(parse("{}"), Err(EventError::Missing("id")));
        assert_eq!(
            parse(
                r#"{"id":"x","source":"aws.ec2","detail-type":"EC2 Spot Instance Interruption Warning"}"#
            ),
            Err(EventError::Missing("detail"))
        );
        let bad_id = fixture("spot-interruption-warning.json").replace(
            "\"instance-id\": \"i-1234567890abcdef0\"",
            "\"instance-id\": \"; rm -rf /\"",
        );
        assert!(matches!(parse(&bad_id), Err(EventError::BadInstanceId(_))));
        let other = r#"{"id":"x","source":"aws.s3","detail-type":"Object Created","detail":{}}"#;
        assert!(matches!(parse(other), Err(EventError::Unhandled { .. })));
        assert!(matches!(
            parse(&"x".repeat(MAX_BODY + 1)),
            Err(EventError::TooLarge(_))
        ));
        let wrong_type = r#"{"id":5,"source":"aws.ec2","detail-type":"x","detail":{}}"#;
        assert_eq!(parse(wrong_type), Err(EventError::Missing("id")));
    }
}
