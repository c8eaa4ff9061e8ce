//! The event plumbing the daemon reads: an SQS queue that EventBridge may
//! send to, rules for the EC2 events spotkeeper acts on targeting it, and
//! receiving/deleting messages.

use aws_sdk_eventbridge::types::{Tag as EbTag, Target};
use aws_sdk_sqs::types::QueueAttributeName;

use super::{AwsCloud, sdk_error};
use crate::error::{CloudError, ErrorKind};
use async_trait::async_trait;

/// How long undelivered events are kept: they are only useful for minutes
/// (a spot warning gives two), so a short retention drops stale ones.
pub const QUEUE_RETENTION_SECONDS: &str = "3600";

/// A rule spotkeeper makes: suffix of its name and its event pattern.
pub const EVENT_RULES: [(&str, &str); 4] = [
    (
        "spot-interruption",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Spot Instance Interruption Warning"]}"#,
    ),
    (
        "rebalance",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Instance Rebalance Recommendation"]}"#,
    ),
    (
        "state-change",
        r#"{"source":["aws.ec2"],"detail-type":["EC2 Instance State-change Notification"]}"#,
    ),
    (
        "scheduled-change",
        r#"{"source":["aws.health"],"detail-type":["AWS Health Event"],"detail":{"service":["EC2"],"eventTypeCategory":["scheduledChange"]}}"#,
    ),
];

/// The tag that says whose a queue (or rule) is.
const OWNER_TAG: &str = "spotkeeper:owner";

/// The owner whose rules a queue policy written by `setup` admits: the
/// `OWNER` of `…:rule/spotkeeper-OWNER-*` in its `aws:SourceArn` condition.
pub fn policy_owner(policy: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(policy).ok()?;
    doc["Statement"].as_array()?.iter().find_map(|st| {
        let arn = st["Condition"]["ArnLike"]["aws:SourceArn"].as_str()?;
        let rest = arn.rsplit_once(":rule/spotkeeper-")?.1;
        rest.strip_suffix("-*").map(str::to_owned)
    })
}

/// The name of one of spotkeeper's rules for `owner`.
pub fn rule_name(owner: &str, suffix: &str) -> String {
    format!("spotkeeper-{owner}-{suffix}")
}

/// One received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMessage {
    /// SQS's message id.
    pub id: String,
    /// The handle to delete it with.
    pub receipt: String,
    /// The body (an EventBridge event as JSON, if all is well).
    pub body: String,
    /// When it was sent (ms since the epoch), for queue lag.
    pub sent_at_ms: Option<u64>,
}

/// What `setup` made or found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plumbing {
    /// Queue URL.
    pub queue_url: String,
    /// Queue ARN.
    pub queue_arn: String,
    /// Whether the queue was created now.
    pub queue_created: bool,
    /// Rules: (name, created now).
    pub rules: Vec<(String, bool)>,
}

/// How long a received event stays hidden from other receivers. Short: a
/// daemon stopped during a long poll may have been handed messages it never
/// saw, and those come back only after this.
pub const RECEIVE_VISIBILITY_SECONDS: i32 = 30;

impl AwsCloud {
    /// The queue's URL, if it exists.
    pub async fn queue_url(&self, name: &str) -> Result<Option<String>, CloudError> {
        match self.sqs().get_queue_url().queue_name(name).send().await {
            Ok(out) => Ok(out.queue_url().map(str::to_owned)),
            Err(e) => {
                let err = sdk_error("GetQueueUrl", e);
                if err.kind == ErrorKind::NotFound
                    || err.code.as_deref() == Some("AWS.SimpleQueueService.NonExistentQueue")
                {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Whose an existing queue is: its `spotkeeper:owner` tag, else the
    /// owner whose rules its policy admits (`rule/spotkeeper-OWNER-*`, what
    /// `setup` writes); `None` when it says neither.
    pub async fn queue_owner(&self, url: &str) -> Result<Option<String>, CloudError> {
        let tags = self
            .sqs()
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .map_err(|e| sdk_error("ListQueueTags", e))?;
        if let Some(owner) = tags.tags().and_then(|t| t.get(OWNER_TAG)) {
            return Ok(Some(owner.clone()));
        }
        let attrs = self
            .sqs()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::Policy)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        Ok(attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::Policy))
            .and_then(|p| policy_owner(p)))
    }

    /// Creates (or finds) the event queue and the rules that feed it, tagged
    /// with the owner, and lets EventBridge send to the queue from those rules
    /// only. A queue another owner's installation uses (its tag or its policy
    /// says so) is refused and left as it is: SQS names are shared by the
    /// account and region, and taking it would rewrite the other's policy and
    /// delete its events.
    pub async fn ensure_event_plumbing(
        &self,
        queue: &str,
        owner: &str,
    ) -> Result<Plumbing, CloudError> {
        let (queue_url, queue_created) = match self.queue_url(queue).await? {
            Some(url) => {
                match self.queue_owner(&url).await? {
                    Some(theirs) if theirs != owner => {
                        return Err(CloudError::other(
                            "CreateQueue",
                            ErrorKind::InvalidRequest,
                            format!(
                                "queue {queue} belongs to the installation of owner {theirs:?} (its tag or its policy says so); \
                                 this one is owner {owner:?}: name another queue in [daemon] queue, or leave it unset for spotkeeper-{owner}-events"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => self.tag_queue(&url, owner).await?,
                }
                (url, false)
            }
            None => {
                let out = self
                    .sqs()
                    .create_queue()
                    .queue_name(queue)
                    .attributes(
                        QueueAttributeName::MessageRetentionPeriod,
                        QUEUE_RETENTION_SECONDS,
                    )
                    .attributes(QueueAttributeName::ReceiveMessageWaitTimeSeconds, "20")
                    .attributes(
                        QueueAttributeName::VisibilityTimeout,
                        RECEIVE_VISIBILITY_SECONDS.to_string(),
                    )
                    .tags(OWNER_TAG, owner)
                    .send()
                    .await
                    .map_err(|e| sdk_error("CreateQueue", e))?;
                (out.queue_url().unwrap_or_default().to_owned(), true)
            }
        };
        let queue_arn = self.allow_event_rules(&queue_url, owner).await?;
        let mut rules = Vec::new();
        for (suffix, pattern) in EVENT_RULES {
            let name = rule_name(owner, suffix);
            let created = self.put_rule(&name, pattern, owner, &queue_arn).await?;
            rules.push((name, created));
        }
        Ok(Plumbing {
            queue_url,
            queue_arn,
            queue_created,
            rules,
        })
    }

    /// Lets the owner's EventBridge rules (and nothing else) send to the
    /// queue; returns the queue's ARN.
    async fn allow_event_rules(&self, queue_url: &str, owner: &str) -> Result<String, CloudError> {
        let attrs = self
            .sqs()
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| sdk_error("GetQueueAttributes", e))?;
        let queue_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| {
                CloudError::other(
                    "GetQueueAttributes",
                    ErrorKind::Other,
                    "the queue has no ARN",
                )
            })?;
        // arn:aws:sqs:REGION:ACCOUNT:NAME
        let parts: Vec<&str> = queue_arn.split(':').collect();
        let (partition, region, account) = (
            parts.get(1).copied().unwrap_or("aws"),
            parts.get(3).copied().unwrap_or(""),
            parts.get(4).copied().unwrap_or(""),
        );
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "spotkeeper-events",
                "Effect": "Allow",
                "Principal": { "Service": "events.amazonaws.com" },
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": { "ArnLike": { "aws:SourceArn": format!("arn:{partition}:events:{region}:{account}:rule/spotkeeper-{owner}-*") } }
            }]
        });
        self.sqs()
            .set_queue_attributes()
            .queue_url(queue_url)
            .attributes(QueueAttributeName::Policy, policy.to_string())
            .send()
            .await
            .map_err(|e| sdk_error("SetQueueAttributes", e))?;

        Ok(queue_arn)
    }

    /// Creates or updates one rule (tagged when new) targeting the queue;
    /// true when it was created.
    async fn put_rule(
        &self,
        name: &str,
        pattern: &str,
        owner: &str,
        queue_arn: &str,
    ) -> Result<bool, CloudError> {
        let exists = match self.events().describe_rule().name(name).send().await {
            Ok(_) => true,
            Err(e) => {
                let err = sdk_error("DescribeRule", e);
                if err.kind == ErrorKind::NotFound {
                    false
                } else {
                    return Err(err);
                }
            }
        };
        let tag = EbTag::builder()
            .key("spotkeeper:owner")
            .value(owner)
            .build()
            .map_err(|e| CloudError::other("PutRule", ErrorKind::InvalidRequest, e.to_string()))?;
        let mut put = self
            .events()
            .put_rule()
            .name(name)
            .event_pattern(pattern)
            .description("spotkeeper: EC2 events for the daemon");
        if !exists {
            put = put.tags(tag);
        }
        put.send().await.map_err(|e| sdk_error("PutRule", e))?;
        let target = Target::builder()
            .id("spotkeeper-queue")
            .arn(queue_arn)
            .build()
            .map_err(|e| {
                CloudError::other("PutTargets", ErrorKind::InvalidRequest, e.to_string())
            })?;
        self.events()
            .put_targets()
            .rule(name)
            .targets(target)
            .send()
            .await
            .map_err(|e| sdk_error("PutTargets", e))?;
        Ok(!exists)
    }

    /// Tags a queue as `owner`'s.
    async fn tag_queue(&self, url: &str, owner: &str) -> Result<(), CloudError> {
        self.sqs()
            .tag_queue()
            .queue_url(url)
            .tags(OWNER_TAG, owner)
            .send()
            .await
            .map_err(|e| sdk_error("TagQueue", e))?;
        Ok(())
    }

    /// Removes the owner's rules and the queue when it is the owner's (a
    /// queue another installation uses is left, and said so); returns one
    /// line per thing removed or kept.
    pub async fn remove_event_plumbing(
        &self,
        queue: &str,
        owner: &str,
    ) -> Result<Vec<String>, CloudError> {
        let mut removed = Vec::new();
        for (suffix, _) in EVENT_RULES {
            let name = rule_name(owner, suffix);
            match self
                .events()
                .remove_targets()
                .rule(&name)
                .ids("spotkeeper-queue")
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) => {
                    let err = sdk_error("RemoveTargets", e);
                    if err.kind == ErrorKind::NotFound {
                        continue;
                    }
                    return Err(err);
                }
            }
            self.events()
                .delete_rule()
                .name(&name)
                .send()
                .await
                .map_err(|e| sdk_error("DeleteRule", e))?;
            removed.push(format!("removed rule {name}"));
        }
        if let Some(url) = self.queue_url(queue).await? {
            match self.queue_owner(&url).await? {
                Some(o) if o == owner => {
                    self.sqs()
                        .delete_queue()
                        .queue_url(&url)
                        .send()
                        .await
                        .map_err(|e| sdk_error("DeleteQueue", e))?;
                    removed.push(format!("removed queue {queue}"));
                }
                Some(theirs) => removed.push(format!(
                    "kept queue {queue}: it belongs to the installation of owner {theirs:?}"
                )),
                None => removed.push(format!(
                    "kept queue {queue}: nothing marks it as this installation's"
                )),
            }
        }
        Ok(removed)
    }

    /// Long-polls the queue for up to `max` (≤ 10) messages, waiting up to `wait_seconds` (≤ 20).
    pub async fn receive_messages(
        &self,
        queue_url: &str,
        max: i32,
        wait_seconds: i32,
    ) -> Result<Vec<QueueMessage>, CloudError> {
        let out = self
            .sqs()
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait_seconds.clamp(0, 20))
            // Handling a message takes milliseconds (the reconciler does the
            // slow part): one a stopped or crashed daemon received but never
            // deleted is back for the next one after this long.
            .visibility_timeout(RECEIVE_VISIBILITY_SECONDS)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp,
            )
            // A long poll legitimately waits `wait_seconds` for an answer: give
            // this call that much more than the client's attempt timeout.
            .customize()
            .config_override(
                aws_sdk_sqs::config::Config::builder().timeout_config(
                    aws_config::timeout::TimeoutConfig::builder()
                        .operation_attempt_timeout(std::time::Duration::from_secs(
                            wait_seconds.clamp(0, 20) as u64 + 15,
                        ))
                        .operation_timeout(std::time::Duration::from_secs(
                            wait_seconds.clamp(0, 20) as u64 + 45,
                        ))
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(|e| sdk_error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| QueueMessage {
                id: m.message_id().unwrap_or_default().to_owned(),
                receipt: m.receipt_handle().unwrap_or_default().to_owned(),
                body: m.body().unwrap_or_default().to_owned(),
                sent_at_ms: m
                    .attributes()
                    .and_then(|a| {
                        a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::SentTimestamp)
                    })
                    .and_then(|t| t.parse().ok()),
            })
            .collect())
    }

    /// Deletes a handled message.
    pub async fn delete_message(&self, queue_url: &str, receipt: &str) -> Result<(), CloudError> {
        self.sqs()
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(|e| sdk_error("DeleteMessage", e))?;
        Ok(())
    }

    /// Sends a message (tests, and re-queueing).
    pub async fn send_message(&self, queue_url: &str, body: &str) -> Result<(), CloudError> {
        self.sqs()
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| sdk_error("SendMessage", e))?;
        Ok(())
    }
}

#[async_trait]
impl crate::queue::JobQueue for AwsCloud {
    /// How many messages wait in the queue (`ApproximateNumberOfMessages`):
    /// the demand of a worker pool. `queue` is a URL or a name.
    async fn queue_depth(&self, queue: &str) -> Result<u64, CloudError> {
        const OP: &str = "GetQueueAttributes";
        let url = if queue.starts_with("https://") || queue.starts_with("http://") {
            queue.to_owned()
        } else {
            self.queue_url(queue).await?.ok_or_else(|| {
                CloudError::other(
                    OP,
                    ErrorKind::NotFound,
                    format!("no SQS queue named {queue}"),
                )
            })?
        };
        let out = self
            .sqs()
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        out.attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                CloudError::other(
                    OP,
                    ErrorKind::Other,
                    "the queue did not report ApproximateNumberOfMessages",
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_a_queue_policy_admits_is_read_from_its_source_arn() {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "Service": "events.amazonaws.com" },
                "Action": "sqs:SendMessage",
                "Condition": { "ArnLike": { "aws:SourceArn": "arn:aws:events:us-east-1:123456789012:rule/spotkeeper-team-a.prod-*" } }
            }]
        });
        assert_eq!(
            policy_owner(&policy.to_string()).as_deref(),
            Some("team-a.prod")
        );
        assert_eq!(policy_owner("{}"), None);
        assert_eq!(policy_owner("not json"), None);
    }
}
