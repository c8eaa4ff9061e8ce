//! The least-privilege IAM policy for everything spotkeeper calls, scoped by
//! the owner tag wherever EC2 supports resource tags in conditions.

use serde_json::{Value, json};

/// The ARN of an SQS queue given by URL (`https://sqs.REGION.amazonaws.com/ACCOUNT/NAME`)
/// or by name (any region and account).
fn queue_arn(queue: &str) -> String {
    let parts: Vec<&str> = queue.trim_end_matches('/').split('/').collect();
    if let [.., host, account, name] = parts.as_slice()
        && let Some(region) = host.strip_prefix("sqs.").and_then(|h| h.split('.').next())
    {
        return format!("arn:aws:sqs:{region}:{account}:{name}");
    }
    format!("arn:aws:sqs:*:*:{}", parts.last().copied().unwrap_or(queue))
}

/// The policy document for `owner`, the daemon's `queue`, and the SQS
/// queues worker pools read their demand from.
pub fn iam_policy(owner: &str, queue: &str, demand_queues: &[String]) -> Value {
    let owned = json!({ "StringEquals": { "aws:ResourceTag/spotkeeper:owner": owner } });
    let tagging_new = json!({ "StringEquals": { "aws:RequestTag/spotkeeper:owner": owner } });
    let mut policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Read",
                "Effect": "Allow",
                "Action": [
                    "ec2:DescribeInstances", "ec2:DescribeSpotInstanceRequests", "ec2:DescribeSpotPriceHistory",
                    "ec2:DescribeAvailabilityZones", "ec2:DescribeImages", "ec2:DescribeVolumes", "ec2:DescribeSnapshots",
                    "ec2:DescribeSubnets", "ec2:DescribeVpcs", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs",
                    "ec2:DescribeNetworkInterfaces", "ec2:DescribeAddresses", "ec2:DescribeInternetGateways",
                    "ec2:DescribeRouteTables", "ec2:DescribeInstanceAttribute"
                ],
                "Resource": "*"
            },
            {
                "Sid": "LaunchOwnedOnly",
                "Effect": "Allow",
                "Action": ["ec2:RunInstances", "ec2:CreateVolume"],
                "Resource": [
                    "arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:spot-instances-request/*"
                ],
                "Condition": tagging_new
            },
            {
                "Sid": "LaunchInputs",
                "Effect": "Allow",
                "Action": "ec2:RunInstances",
                "Resource": [
                    "arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*:*:subnet/*",
                    "arn:aws:ec2:*:*:network-interface/*", "arn:aws:ec2:*:*:security-group/*", "arn:aws:ec2:*:*:key-pair/*"
                ]
            },
            {
                "Sid": "TagAtCreation",
                "Effect": "Allow",
                "Action": "ec2:CreateTags",
                "Resource": "*",
                "Condition": { "StringEquals": { "ec2:CreateAction": ["RunInstances", "CreateVolume", "CreateSnapshot", "CreateImage"] } }
            },
            {
                "Sid": "ActOnOwned",
                "Effect": "Allow",
                "Action": [
                    "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DeleteTags", "ec2:AttachVolume", "ec2:DetachVolume",
                    "ec2:DeleteVolume", "ec2:CreateSnapshot", "ec2:DeleteSnapshot", "ec2:CreateImage", "ec2:DeregisterImage",
                    "ec2:CancelSpotInstanceRequests", "ec2:ModifyInstanceAttribute", "ec2:AssociateAddress"
                ],
                "Resource": "*",
                "Condition": owned
            },
            {
                "Sid": "MoveSnapshotsAndImages",
                "Effect": "Allow",
                "Action": ["ec2:CreateVolume", "ec2:CreateImage", "ec2:CreateSnapshot"],
                "Resource": ["arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:volume/*", "arn:aws:ec2:*:*:instance/*"]
            },
            {
                "Sid": "PublicImageParameters",
                "Effect": "Allow",
                "Action": "ssm:GetParameter",
                "Resource": "arn:aws:ssm:*::parameter/aws/service/*"
            },
            {
                "Sid": "Dns",
                "Effect": "Allow",
                "Action": ["route53:ListHostedZonesByName", "route53:ListResourceRecordSets", "route53:ChangeResourceRecordSets"],
                "Resource": "*"
            },
            {
                "Sid": "EventQueue",
                "Effect": "Allow",
                "Action": [
                    "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                    "sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:DeleteQueue"
                ],
                "Resource": format!("arn:aws:sqs:*:*:{queue}")
            },
            {
                "Sid": "EventRules",
                "Effect": "Allow",
                "Action": [
                    "events:PutRule", "events:DescribeRule", "events:PutTargets", "events:RemoveTargets",
                    "events:DeleteRule", "events:TagResource"
                ],
                "Resource": format!("arn:aws:events:*:*:rule/spotkeeper-{owner}-*")
            },
            {
                "Sid": "PassInstanceRoles",
                "Effect": "Allow",
                "Action": "iam:PassRole",
                "Resource": "*",
                "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
            }
        ]
    });
    if !demand_queues.is_empty()
        && let Some(statements) = policy["Statement"].as_array_mut()
    {
        statements.push(json!({
            "Sid": "PoolDemand",
            "Effect": "Allow",
            "Action": ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
            "Resource": demand_queues.iter().map(|q| queue_arn(q)).collect::<Vec<_>>()
        }));
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destructive_actions_are_scoped_to_the_owner_tag() {
        let p = iam_policy(
            "team-a",
            "spotkeeper-events",
            &[
                "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs".into(),
                "builds".into(),
            ],
        );
        let demand = p["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .find(|s| s["Sid"] == "PoolDemand")
            .expect("PoolDemand");
        assert_eq!(
            demand["Resource"],
            json!([
                "arn:aws:sqs:eu-west-1:123456789012:jobs",
                "arn:aws:sqs:*:*:builds"
            ])
        );
        let statements = p["Statement"].as_array().expect("statements");
        let owned = statements
            .iter()
            .find(|s| s["Sid"] == "ActOnOwned")
            .expect("ActOnOwned");
        assert_eq!(
            owned["Condition"]["StringEquals"]["aws:ResourceTag/spotkeeper:owner"],
            "team-a"
        );
        assert!(
            owned["Action"]
                .as_array()
                .expect("actions")
                .contains(&json!("ec2:TerminateInstances"))
        );
        let rules = statements
            .iter()
            .find(|s| s["Sid"] == "EventRules")
            .expect("rules");
        assert_eq!(
            rules["Resource"],
            "arn:aws:events:*:*:rule/spotkeeper-team-a-*"
        );
        // Nothing grants ec2:* or a destructive action without a condition.
        for s in statements {
            let actions: Vec<&str> = match &s["Action"] {
                Value::String(a) => vec![a.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            assert!(!actions.iter().any(|a| a.ends_with(":*")), "{s}");
            if actions.contains(&"ec2:TerminateInstances") {
                assert!(s.get("Condition").is_some(), "{s}");
            }
        }
    }
}
