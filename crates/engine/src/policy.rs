//! The least-privilege IAM policy for everything spotkeeper calls, scoped by
//! the owner tag wherever EC2 supports tags in conditions, and by what the
//! config names (records, roles, queues, rules) everywhere else.

use serde_json::{Value, json};

use crate::config::Config;

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

/// The policy document for what `config` names: its owner, the daemon's
/// queue and rules, the SQS queues worker pools read their demand from
/// (`demand_queues`), the DNS records and instance profiles of its boxes and
/// pools (and of `[api] instance_profiles`).
///
/// - create actions only with the owner tag in the request
///   (`aws:RequestTag`), act actions only on resources with it
///   (`aws:ResourceTag`), snapshots and images included; a snapshot or image
///   is only made of an owned volume or instance (an explicit deny);
/// - `iam:PassRole` only for the roles of the configured instance profiles
///   (a profile's role is taken to have the profile's name), and not at all
///   without one;
/// - Route 53 changes only of the configured record names;
/// - the EventBridge rules by their exact names.
pub fn iam_policy(config: &Config, demand_queues: &[String]) -> Value {
    let mut statements = ec2_statements(&config.owner);
    statements.extend(event_statements(config));
    statements.extend(dns_statements(config));
    statements.extend(pass_role_statement(config));
    statements.extend(fis_statements(&config.owner));
    if !demand_queues.is_empty() {
        statements.push(json!({
            "Sid": "PoolDemand",
            "Effect": "Allow",
            "Action": ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
            "Resource": demand_queues.iter().map(|q| queue_arn(q)).collect::<Vec<_>>()
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// EC2: read anything; create only tagged as the owner's; act only on the owner's.
fn ec2_statements(owner: &str) -> Vec<Value> {
    let owned = json!({ "StringEquals": { "aws:ResourceTag/spotkeeper:owner": owner } });
    let tagging_new = json!({ "StringEquals": { "aws:RequestTag/spotkeeper:owner": owner } });
    vec![
        json!({
            "Sid": "Read",
            "Effect": "Allow",
            "Action": READ,
            "Resource": "*"
        }),
        json!({
            "Sid": "CreateOwnedOnly",
            "Effect": "Allow",
            "Action": [
                "ec2:RunInstances", "ec2:CreateVolume", "ec2:CreateSnapshot", "ec2:CreateImage",
                "ec2:CopySnapshot", "ec2:CopyImage"
            ],
            "Resource": [
                "arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*",
                "arn:aws:ec2:*:*:spot-instances-request/*", "arn:aws:ec2:*::snapshot/*",
                "arn:aws:ec2:*::image/*"
            ],
            "Condition": tagging_new
        }),
        json!({
            "Sid": "LaunchInputs",
            "Effect": "Allow",
            "Action": ["ec2:RunInstances", "ec2:CreateVolume"],
            "Resource": [
                "arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*:*:subnet/*",
                "arn:aws:ec2:*:*:network-interface/*", "arn:aws:ec2:*:*:security-group/*",
                "arn:aws:ec2:*:*:key-pair/*"
            ]
        }),
        json!({
            "Sid": "SnapshotsAndImagesOnlyOfOwned",
            "Effect": "Deny",
            "Action": ["ec2:CreateSnapshot", "ec2:CreateImage"],
            "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
            "Condition": { "StringNotEquals": { "aws:ResourceTag/spotkeeper:owner": owner } }
        }),
        json!({
            "Sid": "TagAtCreation",
            "Effect": "Allow",
            "Action": "ec2:CreateTags",
            "Resource": "*",
            "Condition": {
                "StringEquals": {
                    "ec2:CreateAction": ["RunInstances", "CreateVolume", "CreateSnapshot", "CreateImage"]
                }
            }
        }),
        json!({
            "Sid": "ActOnOwned",
            "Effect": "Allow",
            "Action": ACT_ON_OWNED,
            "Resource": "*",
            "Condition": owned
        }),
    ]
}

/// Public image parameters, the event queue and the EventBridge rules, by name.
fn event_statements(config: &Config) -> Vec<Value> {
    let owner = config.owner.as_str();
    vec![
        json!({
            "Sid": "PublicImageParameters",
            "Effect": "Allow",
            "Action": "ssm:GetParameter",
            "Resource": "arn:aws:ssm:*::parameter/aws/service/*"
        }),
        json!({
            "Sid": "EventQueue",
            "Effect": "Allow",
            "Action": [
                "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                "sqs:SendMessage", "sqs:CreateQueue", "sqs:SetQueueAttributes", "sqs:TagQueue",
                "sqs:ListQueueTags", "sqs:DeleteQueue"
            ],
            "Resource": format!("arn:aws:sqs:*:*:{}", config.queue)
        }),
        json!({
            "Sid": "EventRules",
            "Effect": "Allow",
            "Action": [
                "events:PutRule", "events:DescribeRule", "events:PutTargets", "events:RemoveTargets",
                "events:DeleteRule", "events:TagResource"
            ],
            "Resource": spotkeeper_cloud::EVENT_RULES
                .iter()
                .map(|(suffix, _)| format!(
                    "arn:aws:events:*:*:rule/{}",
                    spotkeeper_cloud::rule_name(owner, suffix)
                ))
                .collect::<Vec<_>>()
        }),
    ]
}

/// Route 53: changes only of the configured names (A records and their marks).
fn dns_statements(config: &Config) -> Vec<Value> {
    let mut statements = Vec::new();
    let mut records: Vec<String> = config
        .boxes
        .values()
        .filter_map(|b| b.dns.as_ref())
        .flat_map(|d| {
            // The A record and its ownership mark (`_spotkeeper.NAME`, TXT).
            let name = d.name.trim_end_matches('.').to_ascii_lowercase();
            [format!("_spotkeeper.{name}"), name]
        })
        .collect();
    records.sort();
    records.dedup();
    if !records.is_empty() {
        statements.push(json!({
            "Sid": "DnsLookups",
            "Effect": "Allow",
            "Action": ["route53:ListHostedZonesByName", "route53:ListResourceRecordSets"],
            "Resource": "*"
        }));
        statements.push(json!({
            "Sid": "DnsOwnRecordsOnly",
            "Effect": "Allow",
            "Action": "route53:ChangeResourceRecordSets",
            "Resource": "arn:aws:route53:::hostedzone/*",
            "Condition": {
                "ForAllValues:StringEquals": {
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames": records,
                    "route53:ChangeResourceRecordSetsRecordTypes": ["A", "TXT"]
                }
            }
        }));
    }
    statements
}

/// `iam:PassRole` only for the configured instance profiles' roles.
fn pass_role_statement(config: &Config) -> Option<Value> {
    let mut profiles: Vec<&str> = config
        .boxes
        .values()
        .filter_map(|b| b.launch.iam_instance_profile.as_deref())
        .chain(
            config
                .pools
                .values()
                .filter_map(|p| p.launch.iam_instance_profile.as_deref()),
        )
        .chain(config.api_instance_profiles.iter().map(String::as_str))
        .collect();
    profiles.sort();
    profiles.dedup();
    (!profiles.is_empty()).then(|| {
        json!({
            "Sid": "PassInstanceRoles",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": profiles.iter().map(|p| format!("arn:aws:iam::*:role/{p}")).collect::<Vec<_>>(),
            "Condition": { "StringEquals": { "iam:PassedToService": "ec2.amazonaws.com" } }
        })
    })
}

/// The role FIS assumes for `drill --fis` must be named with this prefix:
/// the policy lets spotkeeper pass such roles to FIS and no others.
pub const FIS_ROLE_PREFIX: &str = "spotkeeper-fis";

/// `drill --fis`: experiment templates and experiments only tagged as the
/// owner's, only for the spot interruption action, and only run, read and
/// deleted when they carry the owner's tag; roles passed to FIS only by name
/// ([`FIS_ROLE_PREFIX`]).
fn fis_statements(owner: &str) -> Vec<Value> {
    let owned = json!({ "StringEquals": { "aws:ResourceTag/spotkeeper:owner": owner } });
    let tagging_new = json!({ "StringEquals": { "aws:RequestTag/spotkeeper:owner": owner } });
    vec![
        json!({
            "Sid": "DrillTemplatesOwnedOnly",
            "Effect": "Allow",
            "Action": ["fis:CreateExperimentTemplate", "fis:TagResource"],
            "Resource": [
                format!("arn:aws:fis:*:*:action/{}", spotkeeper_cloud::FIS_SPOT_ACTION),
                "arn:aws:fis:*:*:experiment-template/*".to_owned()
            ],
            "Condition": tagging_new
        }),
        json!({
            "Sid": "DrillExperimentsOwnedOnly",
            "Effect": "Allow",
            "Action": ["fis:StartExperiment", "fis:TagResource"],
            "Resource": "arn:aws:fis:*:*:experiment/*",
            "Condition": tagging_new
        }),
        json!({
            "Sid": "DrillsOfTheOwner",
            "Effect": "Allow",
            "Action": ["fis:StartExperiment", "fis:GetExperiment", "fis:DeleteExperimentTemplate"],
            "Resource": ["arn:aws:fis:*:*:experiment-template/*", "arn:aws:fis:*:*:experiment/*"],
            "Condition": owned
        }),
        json!({
            "Sid": "PassDrillRoles",
            "Effect": "Allow",
            "Action": "iam:PassRole",
            "Resource": format!("arn:aws:iam::*:role/{FIS_ROLE_PREFIX}*"),
            "Condition": { "StringEquals": { "iam:PassedToService": "fis.amazonaws.com" } }
        }),
    ]
}

/// Describes and reads: allowed on every resource (EC2 does not scope them).
const READ: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:DescribeSpotInstanceRequests",
    "ec2:DescribeSpotPriceHistory",
    "ec2:GetSpotPlacementScores",
    "ec2:DescribeAvailabilityZones",
    "ec2:DescribeImages",
    "ec2:DescribeVolumes",
    "ec2:DescribeSnapshots",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcs",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeKeyPairs",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeAddresses",
    "ec2:DescribeInternetGateways",
    "ec2:DescribeRouteTables",
    "ec2:DescribeInstanceAttribute",
    // On-demand prices for `spotkeeper cost` (the Price List has no resources).
    "pricing:GetProducts",
];

/// What spotkeeper does to resources it owns (the owner tag on them).
const ACT_ON_OWNED: &[&str] = &[
    "ec2:TerminateInstances",
    "ec2:CreateTags",
    "ec2:DeleteTags",
    "ec2:AttachVolume",
    "ec2:DetachVolume",
    "ec2:DeleteVolume",
    "ec2:DeleteSnapshot",
    "ec2:DeregisterImage",
    "ec2:CancelSpotInstanceRequests",
    "ec2:ModifyInstanceAttribute",
    "ec2:AssociateAddress",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(extra: &str) -> Value {
        let cfg = crate::config::parse(
            std::path::Path::new("t.toml"),
            &format!("owner = \"team-a\"\n{extra}"),
        )
        .expect("valid");
        iam_policy(
            &cfg,
            &[
                "https://sqs.eu-west-1.amazonaws.com/123456789012/jobs".into(),
                "builds".into(),
            ],
        )
    }

    fn statement<'p>(p: &'p Value, sid: &str) -> Option<&'p Value> {
        p["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .find(|s| s["Sid"] == sid)
    }

    fn actions(s: &Value) -> Vec<&str> {
        match &s["Action"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn destructive_actions_are_scoped_to_the_owner_tag_and_creation_to_the_request_tag() {
        let p = policy("");
        assert_eq!(
            statement(&p, "PoolDemand").expect("demand")["Resource"],
            json!([
                "arn:aws:sqs:eu-west-1:123456789012:jobs",
                "arn:aws:sqs:*:*:builds"
            ])
        );
        let owned = statement(&p, "ActOnOwned").expect("ActOnOwned");
        assert_eq!(
            owned["Condition"]["StringEquals"]["aws:ResourceTag/spotkeeper:owner"],
            "team-a"
        );
        let create = statement(&p, "CreateOwnedOnly").expect("create");
        assert_eq!(
            create["Condition"]["StringEquals"]["aws:RequestTag/spotkeeper:owner"],
            "team-a"
        );
        assert!(actions(create).contains(&"ec2:CreateImage"));
        assert!(actions(create).contains(&"ec2:CreateSnapshot"));
        let deny = statement(&p, "SnapshotsAndImagesOnlyOfOwned").expect("deny");
        assert_eq!(deny["Effect"], "Deny");
        // The rules by their exact names, no wildcard.
        let rules = statement(&p, "EventRules").expect("rules")["Resource"]
            .as_array()
            .expect("names")
            .clone();
        assert_eq!(rules.len(), spotkeeper_cloud::EVENT_RULES.len());
        assert!(rules.iter().all(|r| r.as_str().is_some_and(|r| {
            r.starts_with("arn:aws:events:*:*:rule/spotkeeper-team-a-") && !r.ends_with('*')
        })));
        // Nothing grants x:*, a destructive action without a condition, or a
        // role or DNS change the config does not name.
        for s in p["Statement"].as_array().expect("statements") {
            assert!(!actions(s).iter().any(|a| a.ends_with(":*")), "{s}");
            for a in [
                "ec2:TerminateInstances",
                "ec2:DeleteVolume",
                "ec2:DeleteSnapshot",
            ] {
                if actions(s).contains(&a) {
                    assert!(s.get("Condition").is_some(), "{s}");
                }
            }
            // Drills: only the owner's experiments, roles only to FIS.
            if actions(s)
                .iter()
                .any(|a| a.starts_with("fis:") || *a == "iam:PassRole")
            {
                assert!(s.get("Condition").is_some(), "{s}");
            }
        }
        assert_eq!(
            statement(&p, "PassDrillRoles").expect("drills")["Resource"],
            json!("arn:aws:iam::*:role/spotkeeper-fis*")
        );
        assert!(
            statement(&p, "PassInstanceRoles").is_none(),
            "no profile, no PassRole"
        );
        assert!(
            statement(&p, "DnsOwnRecordsOnly").is_none(),
            "no DNS, no Route 53"
        );
    }

    #[test]
    fn roles_and_records_are_the_configured_ones_only() {
        let p = policy(
            "[api]\ninstance_profiles = [\"api-role\"]\n\
             [box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n\
             iam_instance_profile = \"dev-role\"\ndns = { zone = \"example.com\", name = \"Dev.Example.com.\" }\n",
        );
        assert_eq!(
            statement(&p, "PassInstanceRoles").expect("roles")["Resource"],
            json!([
                "arn:aws:iam::*:role/api-role",
                "arn:aws:iam::*:role/dev-role"
            ])
        );
        assert_eq!(
            statement(&p, "DnsOwnRecordsOnly").expect("dns")["Condition"]["ForAllValues:StringEquals"]
                ["route53:ChangeResourceRecordSetsNormalizedRecordNames"],
            json!(["_spotkeeper.dev.example.com", "dev.example.com"])
        );
        assert_eq!(
            statement(&p, "DnsOwnRecordsOnly").expect("dns")["Condition"]["ForAllValues:StringEquals"]
                ["route53:ChangeResourceRecordSetsRecordTypes"],
            json!(["A", "TXT"])
        );
    }

    /// Every AWS operation the cloud crate calls (found in its source) is in
    /// the policy, or listed here as the library's alone (the `spotkeeper`
    /// binary never calls it): a new call without a policy line fails.
    #[test]
    fn every_aws_call_in_the_code_is_in_the_policy() {
        const LIBRARY_ONLY: &[&str] = &[
            "ec2:GetConsoleOutput",
            "ec2:RebootInstances",
            "ec2:StartInstances",
            "ec2:StopInstances",
            "ec2:AssociateRouteTable",
            "ec2:AttachInternetGateway",
            "ec2:AttachNetworkInterface",
            "ec2:AuthorizeSecurityGroupIngress",
            "ec2:CreateInternetGateway",
            "ec2:CreateNetworkInterface",
            "ec2:CreateRoute",
            "ec2:CreateRouteTable",
            "ec2:CreateSecurityGroup",
            "ec2:CreateSubnet",
            "ec2:CreateVpc",
            "ec2:DeleteInternetGateway",
            "ec2:DeleteKeyPair",
            "ec2:DeleteNetworkInterface",
            "ec2:DeleteRouteTable",
            "ec2:DeleteSecurityGroup",
            "ec2:DeleteSubnet",
            "ec2:DeleteVpc",
            "ec2:DetachInternetGateway",
            "ec2:DisassociateRouteTable",
            "ec2:ImportKeyPair",
            "ec2:ModifyNetworkInterfaceAttribute",
            "ec2:ModifySubnetAttribute",
        ];
        let p = policy(
            "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n\
             iam_instance_profile = \"r\"\ndns = { zone = \"example.com\", name = \"dev.example.com\" }\n",
        );
        let granted: std::collections::HashSet<&str> = p["Statement"]
            .as_array()
            .expect("statements")
            .iter()
            .filter(|s| s["Effect"] == "Allow")
            .flat_map(actions)
            .collect();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cloud/src");
        let mut called = std::collections::BTreeSet::new();
        let mut files = vec![src.clone()];
        while let Some(f) = files.pop() {
            if f.is_dir() {
                files.extend(
                    std::fs::read_dir(&f)
                        .expect("dir")
                        .map(|e| e.expect("entry").path()),
                );
            } else if f.extension().is_some_and(|e| e == "rs") {
                called.extend(operations(&std::fs::read_to_string(&f).expect("source")));
            }
        }
        assert!(called.len() > 40, "the scan found the calls: {called:?}");
        let missing: Vec<&String> = called
            .iter()
            .filter(|a| !granted.contains(a.as_str()) && !LIBRARY_ONLY.contains(&a.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "called but not in the IAM policy: {missing:?}"
        );
    }

    /// `service:Operation` for every `.ec2.operation(` (and route53, sqs,
    /// ssm, events) in `source`, across line breaks.
    fn operations(source: &str) -> Vec<String> {
        let flat: String = source.split_whitespace().collect();
        let mut out = Vec::new();
        // `self.ec2.op(` and, for the clients built on first use,
        // `self.sqs().op(`.
        for (client, service) in [
            (".ec2.", "ec2"),
            (".route53().", "route53"),
            (".sqs().", "sqs"),
            (".ssm().", "ssm"),
            (".events().", "events"),
            (".pricing().", "pricing"),
            (".fis().", "fis"),
        ] {
            for (at, _) in flat.match_indices(client) {
                let rest = &flat[at + client.len()..];
                let op: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if op.is_empty() || !rest[op.len()..].starts_with('(') {
                    continue;
                }
                let pascal: String = op
                    .split('_')
                    .map(|w| {
                        let mut c = w.chars();
                        c.next()
                            .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                            .unwrap_or_default()
                    })
                    .collect();
                out.push(format!("{service}:{pascal}"));
            }
        }
        out
    }
}
