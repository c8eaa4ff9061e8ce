//! `setup`, `cleanup` and `iam-policy` against the emulator: the queue and
//! rules are made once, EventBridge delivers a real spot warning to the
//! queue, and cleanup (with --all) leaves nothing of ours behind.

use crate::common::{CONFIG, Cli, describe, stderr};
use serde_json::Value;

fn queue_names(cli: &Cli) -> Vec<String> {
    let out = cli.moto.boto("sqs = boto3.client('sqs', **kw)\nprint(json.dumps([u.rsplit('/', 1)[-1] for u in sqs.list_queues().get('QueueUrls', [])]))");
    serde_json::from_str(out.trim()).expect("json")
}

fn rule_names(cli: &Cli) -> Vec<String> {
    let out = cli.moto.boto("eb = boto3.client('events', **kw)\nprint(json.dumps(sorted(r['Name'] for r in eb.list_rules()['Rules'])))");
    serde_json::from_str(out.trim()).expect("json")
}

#[test]
fn setup_is_idempotent_and_events_reach_the_queue() {
    let cli = Cli::new();
    let first = cli.json(&["setup", "--json"]);
    assert_eq!(first["queue_created"], true);
    assert!(
        first["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .all(|r| r["created"] == true)
    );
    let second = cli.json(&["setup", "--json"]);
    assert_eq!(second["queue_created"], false, "found, not made twice");
    assert!(
        second["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .all(|r| r["created"] == false)
    );
    assert_eq!(
        queue_names(&cli),
        vec!["spotkeeper-clitest-events".to_owned()]
    );
    assert_eq!(
        rule_names(&cli),
        [
            "rebalance",
            "scheduled-change",
            "spot-interruption",
            "state-change"
        ]
        .map(|s| format!("spotkeeper-clitest-{s}"))
    );
    let attrs = cli.moto.boto(
        "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-clitest-events')['QueueUrl']\n\
         print(json.dumps(sqs.get_queue_attributes(QueueUrl=u, AttributeNames=['All'])['Attributes']))",
    );
    let attrs: Value = serde_json::from_str(attrs.trim()).expect("json");
    assert_eq!(attrs["MessageRetentionPeriod"], "3600");
    assert_eq!(
        attrs["VisibilityTimeout"], "30",
        "a message a stopped daemon never saw comes back soon"
    );
    let policy: Value =
        serde_json::from_str(attrs["Policy"].as_str().expect("policy")).expect("policy json");
    assert_eq!(
        policy["Statement"][0]["Principal"]["Service"],
        "events.amazonaws.com"
    );
    assert_eq!(first["iam_policy"]["Version"], "2012-10-17");

    // A real spot warning, put on the event bus, arrives in the queue.
    let warning = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/fixtures/events/spot-interruption-warning.json"
    ))
    .expect("fixture");
    let detail: Value = serde_json::from_str(&warning).expect("fixture json");
    let body = cli.moto.boto(&format!(
        "eb = boto3.client('events', **kw)\nsqs = boto3.client('sqs', **kw)\n\
         eb.put_events(Entries=[{{'Source': 'aws.ec2', 'DetailType': 'EC2 Spot Instance Interruption Warning', 'Detail': json.dumps({})}}])\n\
         u = sqs.get_queue_url(QueueName='spotkeeper-clitest-events')['QueueUrl']\n\
         m = sqs.receive_message(QueueUrl=u, WaitTimeSeconds=2).get('Messages', [])\nprint(m[0]['Body'] if m else '')",
        serde_json::to_string(&serde_json::to_string(&detail["detail"]).expect("s")).expect("quoted")
    ));
    let event: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("no event in the queue ({e}): {body:?}"));
    assert_eq!(
        event["detail-type"],
        "EC2 Spot Instance Interruption Warning"
    );
    assert_eq!(event["detail"]["instance-id"], "i-1234567890abcdef0");

    let out = cli.ok(&["cleanup"]);
    assert!(
        stderr(&out).contains("removed queue spotkeeper-clitest-events"),
        "{}",
        describe(&out)
    );
    assert!(queue_names(&cli).is_empty());
    assert!(rule_names(&cli).is_empty());
    let again = cli.ok(&["cleanup"]);
    assert!(
        stderr(&again).contains("Nothing to clean up"),
        "{}",
        describe(&again)
    );
}

#[test]
fn iam_policy_scopes_destruction_by_the_owner_tag() {
    let cli = Cli::new();
    let p = cli.json(&["iam-policy"]);
    let owned = p["Statement"]
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| s["Sid"] == "ActOnOwned")
        .cloned()
        .expect("ActOnOwned");
    assert_eq!(
        owned["Condition"]["StringEquals"]["aws:ResourceTag/spotkeeper:owner"],
        "clitest"
    );
}

#[test]
fn cleanup_all_lists_asks_and_removes_everything_spotkeeper_owns() {
    let config = CONFIG.replace(
        "tags =",
        "data_volume = { name = \"dev-data\", size_gb = 5, on_stop = \"delete\" }\ndns = { zone = \"example.com\", name = \"dev.example.com\" }\ntags =",
    );
    let cli = Cli::with_config(&config);
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='c')");
    cli.ok(&["setup"]);
    cli.ok(&["up", "dev"]);
    cli.ok(&["image", "create", "dev"]);
    // A volume spotkeeper owns but no configured box claims: kept.
    cli.moto.boto("ec2.create_volume(AvailabilityZone='us-east-1a', Size=1, TagSpecifications=[{'ResourceType': 'volume', 'Tags': [{'Key': 'spotkeeper:owner', 'Value': 'clitest'}, {'Key': 'Name', 'Value': 'stray'}]}])");

    let refused = cli
        .command(&["cleanup", "--all"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let listing = stderr(&refused);
    assert!(
        listing.contains("terminate instance")
            && listing.contains("delete volume")
            && listing.contains("deregister image")
            && listing.contains("delete DNS record"),
        "{listing}"
    );
    assert!(
        listing.contains("keep volume") && listing.contains("no box in the config claims it"),
        "{listing}"
    );
    assert_eq!(cli.live().len(), 1, "nothing removed without --yes");

    let out = cli.ok(&["cleanup", "--all", "--yes"]);
    assert!(stderr(&out).contains("terminated"), "{}", describe(&out));
    assert!(cli.live().is_empty());
    let left = cli.moto.boto(
        "v = [x['VolumeId'] for x in ec2.describe_volumes(Filters=[{'Name': 'tag:spotkeeper:owner', 'Values': ['clitest']}])['Volumes']]\n\
         i = [x['ImageId'] for x in ec2.describe_images(Owners=['self'])['Images']]\n\
         z = r53.list_hosted_zones()['HostedZones'][0]['Id']\n\
         a = [x['Name'] for x in r53.list_resource_record_sets(HostedZoneId=z)['ResourceRecordSets'] if x['Type'] == 'A']\n\
         print(json.dumps({'volumes': len(v), 'images': i, 'a': a}))",
    );
    let left: Value = serde_json::from_str(left.trim()).expect("json");
    assert_eq!(
        left,
        serde_json::json!({"volumes": 1, "images": [], "a": []}),
        "only the unclaimed volume is kept"
    );
}

#[test]
fn setup_writes_a_unique_owner_into_a_config_without_one_keeping_its_comments() {
    let text = format!(
        "# my spot boxes\n# (hand-written)\n{}",
        CONFIG.replace("owner = \"clitest\"\n", "")
    );
    let cli = Cli::with_config(&text);
    // The file's mode survives the rewrite (written beside it, renamed over it).
    std::fs::set_permissions(
        cli.config_path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .expect("chmod");
    let out = cli.ok(&["setup"]);
    let written = std::fs::read_to_string(cli.config_path()).expect("config");
    let owner_line = written
        .lines()
        .find(|l| l.starts_with("owner = \"spotkeeper-"))
        .unwrap_or_else(|| panic!("no owner written:\n{written}"));
    let owner = owner_line.split('"').nth(1).expect("quoted").to_owned();
    assert_eq!(
        owner.len(),
        "spotkeeper-".len() + 12,
        "48 random bits: {owner}"
    );
    assert!(
        owner["spotkeeper-".len()..]
            .chars()
            .all(|c| c.is_ascii_hexdigit()),
        "{owner}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cli.config_path())
            .expect("meta")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);
    assert!(
        std::fs::read_dir(cli.dir.path())
            .expect("dir")
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".tmp")),
        "no temporary file left beside it"
    );
    assert!(
        stderr(&out).contains(&format!("Wrote owner = {owner:?}")),
        "{}",
        describe(&out)
    );
    // Everything else as it was, comments included.
    assert_eq!(
        written.replace(&format!("{owner_line}\n"), ""),
        text,
        "{written}"
    );
    // The new owner is used, and a second setup changes nothing.
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(inst["tags"]["spotkeeper:owner"], owner.as_str());
    cli.ok(&["setup"]);
    assert_eq!(
        std::fs::read_to_string(cli.config_path()).expect("config"),
        written
    );
}

#[test]
fn setup_keeps_the_default_owner_when_aws_already_holds_its_resources() {
    let cli = Cli::with_config(&CONFIG.replace("owner = \"clitest\"\n", ""));
    cli.moto.boto(
        "ec2.run_instances(ImageId='ami-0123456789abcdef0', MinCount=1, MaxCount=1, InstanceType='t3.micro', \
         TagSpecifications=[{'ResourceType': 'instance', 'Tags': [{'Key': 'spotkeeper:owner', 'Value': 'spotkeeper'}, {'Key': 'spotkeeper:box', 'Value': 'dev'}]}])",
    );
    cli.ok(&["setup"]);
    let written = std::fs::read_to_string(cli.config_path()).expect("config");
    assert!(written.starts_with("owner = \"spotkeeper\""), "{written}");
    assert_eq!(
        cli.live().len(),
        1,
        "the existing box is still this installation's"
    );
}

/// Runs spotkeeper as another installation in the same account and region:
/// its own config (owner `owner`, `extra` appended) and state.
fn as_owner(cli: &Cli, owner: &str, extra: &str, args: &[&str]) -> std::process::Output {
    let dir = cli.dir.path().join(owner);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("spotkeeper.toml");
    std::fs::write(
        &config,
        format!("owner = \"{owner}\"\n{extra}\n[aws]\nregion = \"us-east-1\"\n"),
    )
    .expect("config");
    cli.command_as(&config, &dir.join("state.db"), args)
        .output()
        .expect("run")
}

fn ok_as(cli: &Cli, owner: &str, args: &[&str]) -> std::process::Output {
    let out = as_owner(cli, owner, "", args);
    assert!(
        out.status.success(),
        "{owner}: {args:?}: {}",
        describe(&out)
    );
    out
}

#[test]
fn two_installations_get_a_queue_each_and_either_cleanup_leaves_the_others() {
    let cli = Cli::new();
    ok_as(&cli, "team-a", &["setup"]);
    ok_as(&cli, "team.b", &["setup"]);
    let mut queues = queue_names(&cli);
    queues.sort();
    assert_eq!(
        queues,
        ["spotkeeper-team-a-events", "spotkeeper-team_b-events"]
    );
    assert_eq!(rule_names(&cli).len(), 8, "four rules each");

    let out = ok_as(&cli, "team-a", &["cleanup"]);
    assert!(
        stderr(&out).contains("removed queue spotkeeper-team-a-events"),
        "{}",
        describe(&out)
    );
    assert_eq!(queue_names(&cli), ["spotkeeper-team_b-events"]);
    let rules = rule_names(&cli);
    assert_eq!(rules.len(), 4, "{rules:?}");
    assert!(
        rules.iter().all(|r| r.starts_with("spotkeeper-team.b-")),
        "{rules:?}"
    );
    // b's plumbing still delivers: a warning put on the bus reaches b's queue.
    let got = cli.moto.boto(
        "eb = boto3.client('events', **kw)\nsqs = boto3.client('sqs', **kw)\n\
         eb.put_events(Entries=[{'Source': 'aws.ec2', 'DetailType': 'EC2 Spot Instance Interruption Warning', 'Detail': json.dumps({'instance-id': 'i-1', 'instance-action': 'terminate'})}])\n\
         u = sqs.get_queue_url(QueueName='spotkeeper-team_b-events')['QueueUrl']\n\
         print(len(sqs.receive_message(QueueUrl=u, WaitTimeSeconds=2).get('Messages', [])))",
    );
    assert_eq!(got.trim(), "1");
}

#[test]
fn setup_refuses_a_queue_another_installation_uses_and_leaves_it_as_it_was() {
    let cli = Cli::new();
    ok_as(&cli, "team-a", &["setup"]);
    let policy = |cli: &Cli, q: &str| {
        cli.moto.boto(&format!(
            "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='{q}')['QueueUrl']\n\
             print(sqs.get_queue_attributes(QueueUrl=u, AttributeNames=['Policy'])['Attributes']['Policy'])"
        ))
    };
    let before = policy(&cli, "spotkeeper-team-a-events");
    // b names a's queue (its tag says team-a).
    let out = as_owner(
        &cli,
        "team-b",
        "[daemon]\nqueue = \"spotkeeper-team-a-events\"",
        &["setup"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "queue spotkeeper-team-a-events belongs to the installation of owner \"team-a\""
        ) && err.contains("this one is owner \"team-b\""),
        "{err}"
    );
    assert_eq!(
        policy(&cli, "spotkeeper-team-a-events"),
        before,
        "a's policy untouched"
    );
    assert!(
        rule_names(&cli)
            .iter()
            .all(|r| !r.starts_with("spotkeeper-team-b-")),
        "no rule of b points at a's queue"
    );

    // A queue without a tag whose policy admits another owner's rules: refused too.
    cli.moto.boto(
        "sqs = boto3.client('sqs', **kw)\n\
         sqs.create_queue(QueueName='handmade', Attributes={'Policy': json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'Service': 'events.amazonaws.com'}, 'Action': 'sqs:SendMessage', 'Resource': '*', 'Condition': {'ArnLike': {'aws:SourceArn': 'arn:aws:events:us-east-1:123456789012:rule/spotkeeper-team-c-*'}}}]})})",
    );
    let out = as_owner(&cli, "team-b", "[daemon]\nqueue = \"handmade\"", &["setup"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("owner \"team-c\""),
        "{}",
        describe(&out)
    );
    // b's cleanup of a queue it does not own removes its rules and keeps the queue.
    let out = as_owner(
        &cli,
        "team-b",
        "[daemon]\nqueue = \"spotkeeper-team-a-events\"",
        &["cleanup"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stderr(&out).contains("kept queue spotkeeper-team-a-events: it belongs to the installation of owner \"team-a\""),
        "{}",
        describe(&out)
    );
    assert!(queue_names(&cli).contains(&"spotkeeper-team-a-events".to_owned()));
}

#[test]
fn an_installation_on_the_old_shared_queue_keeps_it_and_is_told_how_to_move() {
    let cli = Cli::new();
    // What setup made before queue names were derived from the owner.
    cli.moto.boto(
        "sqs = boto3.client('sqs', **kw)\n\
         sqs.create_queue(QueueName='spotkeeper-events', tags={'spotkeeper:owner': 'clitest'})",
    );
    let first = cli.json(&["setup", "--json"]);
    assert_eq!(first["queue"], "spotkeeper-events");
    assert_eq!(first["legacy_queue"], true);
    assert_eq!(first["queue_created"], false);
    assert_eq!(queue_names(&cli), ["spotkeeper-events"], "no second queue");
    let out = cli.ok(&["setup"]);
    assert!(
        stderr(&out).contains("reads the queue spotkeeper-events")
            && stderr(&out).contains("To move to spotkeeper-clitest-events"),
        "{}",
        describe(&out)
    );
    // Another installation does not take the old queue: it gets its own.
    ok_as(&cli, "other", &["setup"]);
    let mut queues = queue_names(&cli);
    queues.sort();
    assert_eq!(queues, ["spotkeeper-events", "spotkeeper-other-events"]);
    // The move: cleanup removes the old queue (this owner's), setup makes the new.
    let out = cli.ok(&["cleanup"]);
    assert!(
        stderr(&out).contains("removed queue spotkeeper-events"),
        "{}",
        describe(&out)
    );
    let moved = cli.json(&["setup", "--json"]);
    assert_eq!(moved["queue"], "spotkeeper-clitest-events");
    assert_eq!(moved["legacy_queue"], false);
    let mut queues = queue_names(&cli);
    queues.sort();
    assert_eq!(
        queues,
        ["spotkeeper-clitest-events", "spotkeeper-other-events"]
    );
}
