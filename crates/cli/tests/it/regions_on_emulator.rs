//! A box with two regions on the emulator (one server answers every region,
//! as the SDK's per-region clients ask it): its data volume's replicas are
//! snapshots in the home region copied to the other (`CopySnapshot` called
//! in the destination), tagged at creation, pruned to `keep` in each region,
//! with the recovery point said per region.

use serde_json::Value;

use crate::common::{CONFIG, Cli, describe};

const REPLICATED: &str = r#"regions = ["us-east-1", "us-west-2"]
data_volume = { name = "dev-data", size_gb = 10, mount = "/data", replicate = "1h", keep = 2, on_stop = "snapshot" }"#;

fn with(extra: &str) -> String {
    CONFIG.replace("tags =", &format!("{extra}\ntags ="))
}

/// What the boto3 `code` prints as JSON, with the clients `c` (EC2), `sqs`
/// and `eb` (EventBridge) of `region` at the emulator.
pub(crate) fn in_region(cli: &Cli, region: &str, code: &str) -> Value {
    let out = cli.moto.boto(&format!(
        "at = dict(region_name='{region}', endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
         c, sqs, eb = boto3.client('ec2', **at), boto3.client('sqs', **at), boto3.client('events', **at)\n{code}"
    ));
    serde_json::from_str(out.trim()).expect("json")
}

/// The replicas of `dev-data` the emulator holds in `region`, newest first.
fn replicas(cli: &Cli, region: &str) -> Vec<Value> {
    in_region(
        cli,
        region,
        "r = c.describe_snapshots(OwnerIds=['self'], Filters=[{'Name': 'tag:spotkeeper:purpose', 'Values': ['replica']}])['Snapshots']\n\
         r.sort(key=lambda s: s['StartTime'], reverse=True)\n\
         print(json.dumps([{'id': s['SnapshotId'], 'state': s['State'], 'tags': {t['Key']: t['Value'] for t in s.get('Tags', [])}} for s in r]))",
    )
    .as_array()
    .expect("array")
    .clone()
}

/// The images of box `dev` the emulator holds in `region`: id and tags.
fn images(cli: &Cli, region: &str) -> Vec<Value> {
    in_region(
        cli,
        region,
        "r = c.describe_images(Owners=['self'], Filters=[{'Name': 'tag:spotkeeper:box', 'Values': ['dev']}])['Images']\n\
         print(json.dumps([{'id': i['ImageId'], 'tags': {t['Key']: t['Value'] for t in i.get('Tags', [])}} for i in r]))",
    )
    .as_array()
    .expect("array")
    .clone()
}

#[test]
fn a_replicated_data_volume_is_copied_to_the_other_region_tagged_and_pruned_to_keep() {
    let cli = Cli::with_config(&with(REPLICATED));
    let early = cli.run(&["replicate", "dev"]);
    assert_eq!(early.status.code(), Some(1), "{}", describe(&early));
    assert!(
        describe(&early).contains("`up` the box first"),
        "{}",
        describe(&early)
    );
    assert!(replicas(&cli, "us-east-1").is_empty());

    cli.ok(&["up", "dev"]);
    let first = cli.json(&["replicate", "dev", "--json"]);
    let west = &first["regions"][0];
    assert_eq!(west["region"], "us-west-2", "{first}");
    assert_eq!(west["completed"], true, "{first}");
    assert_eq!(west["replicas"], 1, "{first}");
    assert!(
        west["recovery_point_seconds"]
            .as_i64()
            .is_some_and(|s| (0..60).contains(&s)),
        "{first}"
    );
    let copies = replicas(&cli, "us-west-2");
    assert_eq!(copies.len(), 1, "{copies:?}");
    let home = replicas(&cli, "us-east-1");
    assert_eq!(home.len(), 1, "{home:?}");
    let tags = &copies[0]["tags"];
    assert_eq!(tags["spotkeeper:owner"], "clitest");
    assert_eq!(tags["spotkeeper:box"], "dev");
    assert_eq!(tags["spotkeeper:volume"], "dev-data");
    assert_eq!(
        tags["spotkeeper:copy-of"],
        format!("us-east-1/{}", home[0]["id"].as_str().expect("id"))
    );
    assert_eq!(
        tags["spotkeeper:taken-at"],
        home[0]["tags"]["spotkeeper:taken-at"]
    );
    assert_eq!(west["newest"], copies[0]["id"]);

    // Three more rounds: each region keeps the newest two.
    for _ in 0..3 {
        cli.ok(&["replicate", "dev"]);
    }
    assert_eq!(replicas(&cli, "us-west-2").len(), 2);
    assert_eq!(replicas(&cli, "us-east-1").len(), 2);
    let status = cli.ok(&["replicate", "dev", "--status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("a failover to us-west-2 now would lose up to"),
        "{text}"
    );
    let replicated =
        cli.state_rows("SELECT message FROM events WHERE box = 'dev' AND kind = 'replicated'");
    assert_eq!(replicated.len(), 4, "{replicated:?}");
    assert!(
        replicated[0][0].contains("copied to us-west-2 snap-"),
        "{replicated:?}"
    );
    // Replicas are not stop snapshots: a stop's pruning leaves them, and
    // the next `up` restores the volume from the stop snapshot.
    cli.ok(&["stop", "dev"]);
    assert_eq!(replicas(&cli, "us-east-1").len(), 2);
    let stop = cli.moto.boto(
        "r = ec2.describe_snapshots(OwnerIds=['self'], Filters=[{'Name': 'tag:spotkeeper:purpose', 'Values': ['stop']}])['Snapshots']\n\
         print(' '.join(s['SnapshotId'] for s in r))",
    );
    let stop = stop.trim();
    assert!(stop.starts_with("snap-") && !stop.contains(' '), "{stop}");
    cli.ok(&["up", "dev"]);
    let from = cli.moto.boto(
        "r = ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\n\
         print(' '.join(v.get('SnapshotId', '') for v in r))",
    );
    assert_eq!(from.trim(), stop, "restored from the stop snapshot");
}

#[test]
fn replication_needs_a_second_region_and_its_home_where_spotkeeper_runs() {
    let lonely = Cli::with_config(&with(
        r#"data_volume = { name = "dev-data", size_gb = 10, replicate = "1h" }"#,
    ));
    let out = lonely.run(&["list"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        describe(&out).contains("list them in regions"),
        "{}",
        describe(&out)
    );
    for (bad, says) in [
        (r#"regions = ["us-east"]"#, "is not an AWS region name"),
        (r#"regions = ["us-east-1", "us-east-1"]"#, "listed twice"),
        (
            r#"regions = ["us-east-1", "us-west-2"]
data_volume = { name = "dev-data", size_gb = 10, replicate = "1m" }"#,
            "data_volume.replicate must be at least",
        ),
    ] {
        let cli = Cli::with_config(&with(bad));
        let out = cli.run(&["list"]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", describe(&out));
        assert!(describe(&out).contains(says), "{bad}: {}", describe(&out));
    }
    // Its home is another region than the one spotkeeper runs in.
    let away = Cli::with_config(&with(
        r#"regions = ["us-west-2", "us-east-1"]
data_volume = { name = "dev-data", size_gb = 10, replicate = "1h" }"#,
    ));
    away.ok(&["up", "dev"]);
    let out = away.run(&["replicate", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        describe(&out).contains("[aws] region = \"us-west-2\""),
        "{}",
        describe(&out)
    );
    assert!(replicas(&away, "us-west-2").is_empty());
    assert!(replicas(&away, "us-east-1").is_empty());
}

/// On AWS a copy across regions completes later: until then it is no
/// recovery point, pruning never takes a region's last completed copy for
/// a pending newer one, and no second copy is started to a region still
/// copying (the emulator keeps copies `pending` as AWS does).
#[test]
fn a_copy_still_under_way_is_no_recovery_point_and_the_last_completed_one_is_kept() {
    let cli = Cli::with_config(&with(REPLICATED));
    cli.ok(&["up", "dev"]);
    cli.ok(&["replicate", "dev"]);
    let done = replicas(&cli, "us-west-2");
    assert_eq!(done.len(), 1);
    cli.moto
        .set_copying_for(std::time::Duration::from_secs(600));
    for _ in 0..3 {
        cli.ok(&["replicate", "dev"]);
    }
    let west = replicas(&cli, "us-west-2");
    let pending = west.iter().filter(|r| r["state"] == "pending").count();
    assert!(
        west.iter()
            .any(|r| r["id"] == done[0]["id"] && r["state"] == "completed"),
        "the last completed copy was pruned: {west:?}"
    );
    // One copy in flight: the rounds after it skip the region and say so.
    assert_eq!(pending, 1, "{west:?}");
    let skipped = cli.state_rows(
        "SELECT message FROM events WHERE box = 'dev' AND kind = 'replicated' ORDER BY id DESC LIMIT 1",
    );
    assert!(
        skipped[0][0].contains("a copy to us-west-2 is still under way"),
        "{skipped:?}"
    );
    let status = cli.json(&["replicate", "dev", "--status", "--json"]);
    let region = &status["regions"][0];
    assert_eq!(region["completed"], false, "{status}");
    // Rounds a second apart share their taken-at: the newest is a pending one.
    assert!(
        west.iter()
            .any(|r| r["id"] == region["newest"] && r["state"] == "pending"),
        "{status} {west:?}"
    );
    // The recovery point is the completed copy's age, not the pending one's.
    assert!(
        region["recovery_point_seconds"].as_i64().is_some(),
        "{status}"
    );
    let first_taken: i64 = done[0]["tags"]["spotkeeper:taken-at"]
        .as_str()
        .expect("taken-at")
        .parse()
        .expect("seconds");
    let newest_taken: i64 = west
        .iter()
        .find(|r| r["id"] == region["newest"])
        .expect("listed")["tags"]["spotkeeper:taken-at"]
        .as_str()
        .expect("taken-at")
        .parse()
        .expect("seconds");
    assert!(newest_taken >= first_taken);
    let said = region["says"].as_str().expect("says");
    assert!(said.contains("would lose up to"), "{said}");
}

/// The daemon copies a settled box's volume when no replica is younger than
/// `replicate`, and not again before: neither on later passes nor after a
/// restart (the newest replica's taken-at says when the next is due); its
/// scheduled image is copied to the other region too.
#[test]
fn the_daemon_replicates_a_settled_box_once_per_interval_even_across_a_restart() {
    use crate::common::{Serve, wait_passes};
    let api_port = spotkeeper_testkit::closed_port();
    let config = with(&format!(
        "{}\nimages = {{ every = \"1h\", keep = 1 }}",
        REPLICATED.replace("\"1h\"", "\"10m\"")
    ))
    .replace(
        "[aws]",
        &format!(
            "[daemon]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             token = \"e2e-token-0123456789\"\n\n[aws]"
        ),
    );
    let cli = Cli::with_config(&config);
    cli.ok(&["setup"]);
    cli.ok(&["up", "dev"]);
    let serve = Serve::start(&cli);
    spotkeeper_testkit::eventually(
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(250),
        || (!replicas(&cli, "us-west-2").is_empty()).then_some(()),
        || format!("no replica:\n{}", serve.log()),
    );
    wait_passes(api_port, 5, &serve);
    assert_eq!(replicas(&cli, "us-west-2").len(), 1, "{}", serve.log());
    // The API (and the dashboard from it) says the recovery point.
    let boxes =
        crate::common::http_get(api_port, "/api/boxes", Some("e2e-token-0123456789")).expect("API");
    let body: Value =
        serde_json::from_str(boxes.split_once("\r\n\r\n").expect("body").1).expect("json");
    let dev = body
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "dev"))
        .unwrap_or_else(|| panic!("{body}"));
    let west = &dev["replicas"][0];
    assert_eq!(west["region"], "us-west-2", "{dev}");
    assert_eq!(west["copying"], false, "{dev}");
    assert!(
        west["recovery_point_seconds"]
            .as_i64()
            .is_some_and(|s| (0..120).contains(&s)),
        "{dev}"
    );
    assert!(
        west["says"]
            .as_str()
            .is_some_and(|s| s.starts_with("a failover to us-west-2 now would lose up to")),
        "{dev}"
    );
    assert!(serve.stop().success());
    let serve = Serve::start(&cli);
    wait_passes(api_port, 5, &serve);
    assert!(serve.stop().success());
    assert_eq!(replicas(&cli, "us-west-2").len(), 1);
    assert_eq!(replicas(&cli, "us-east-1").len(), 1);
    let said =
        cli.state_rows("SELECT kind FROM events WHERE box = 'dev' AND kind LIKE 'replicat%'");
    assert_eq!(said, vec![vec!["replicated".to_owned()]], "{said:?}");
    // The daemon's scheduled image went to us-west-2 too.
    let copied = images(&cli, "us-west-2");
    assert_eq!(copied.len(), 1, "{copied:?}");
    assert!(
        copied[0]["tags"]["spotkeeper:copy-of"]
            .as_str()
            .is_some_and(|c| c.starts_with("us-east-1/ami-")),
        "{copied:?}"
    );
    let events = cli.state_rows("SELECT message FROM events WHERE box = 'dev' AND kind = 'image'");
    assert!(
        events
            .iter()
            .any(|e| e[0].starts_with("copied image ami-") && e[0].contains("us-west-2 ami-")),
        "{events:?}"
    );
}

/// `price BOX` ranks the home region's offerings (what `up` launches) and
/// lists the box's types in its other regions beside them, in every zone
/// there, each with its region.
#[test]
fn price_lists_the_offerings_of_every_region_of_the_box() {
    let cli = Cli::with_config(&with(&REPLICATED.replace(
        r#"regions = ["us-east-1", "us-west-2"]"#,
        "regions = [\"us-east-1\", \"us-west-2\", \"eu-west-1\"]\n\
         region_surcharge = { \"eu-west-1\" = 0.002 }",
    )));
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.03)),
            ("t3a.micro", None),
            ("t3.micro/us-east-1a", Some(0.004)),
            ("t3.micro/us-west-2a", Some(0.0021)),
            ("t3.micro/us-west-2b", Some(0.05)),
            ("t3.micro/eu-west-1a", Some(0.0015)),
        ],
        &[],
    );
    let rows = cli.json(&["price", "dev", "--json"]);
    let rows = rows.as_array().expect("rows");
    let home: Vec<&Value> = rows.iter().filter(|r| r["region"] == "us-east-1").collect();
    assert!(
        !home.is_empty()
            && home.iter().all(|r| r["zone"]
                .as_str()
                .is_some_and(|z| z.starts_with("us-east-1")))
    );
    assert_eq!(home[0]["rank"], 1, "{rows:?}");
    let west: Vec<&Value> = rows.iter().filter(|r| r["region"] == "us-west-2").collect();
    let cheap = west
        .iter()
        .find(|r| r["instance_type"] == "t3.micro" && r["zone"] == "us-west-2a")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(cheap["price"], 0.0021);
    assert_eq!(cheap["under_ceiling"], true);
    assert!(cheap["rank"].is_null(), "not what `up` launches: {cheap}");
    // Cheaper in eu-west-1 by price, dearer with its surcharge: a failover
    // goes to us-west-2a first.
    assert_eq!(cheap["failover_rank"], 1, "{rows:?}");
    let eu = rows
        .iter()
        .find(|r| r["zone"] == "eu-west-1a" && r["instance_type"] == "t3.micro")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(eu["failover_rank"], 2, "{eu}");
    assert!((eu["adjusted_price"].as_f64().expect("adjusted") - 0.0035).abs() < 1e-9);
    let dear = west
        .iter()
        .find(|r| r["instance_type"] == "t3.micro" && r["zone"] == "us-west-2b")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(dear["under_ceiling"], false);
    assert!(dear["failover_rank"].is_null());
    let table = cli.ok(&["price", "dev"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("REGION") && text.contains("us-west-2a") && text.contains("f1"),
        "{text}"
    );
    // A surcharge for a region the box does not list is refused.
    cli.write_config(&with(&REPLICATED.replace(
        r#"regions = ["us-east-1", "us-west-2"]"#,
        "regions = [\"us-east-1\", \"us-west-2\"]\nregion_surcharge = { \"eu-west-1\" = 0.002 }",
    )));
    let refused = cli.run(&["price", "dev"]);
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    assert!(
        describe(&refused).contains("not one of the box's other regions"),
        "{}",
        describe(&refused)
    );
}

/// An image of a box with regions is copied to each other region with the
/// image's tags (so `box:latest` would find it there), idempotently per
/// source image and region, and each region keeps `images.keep`.
#[test]
fn a_box_image_is_copied_to_the_other_regions_and_pruned_there_too() {
    let cli = Cli::with_config(&with(
        "regions = [\"us-east-1\", \"us-west-2\"]\nimages = { keep = 1 }",
    ));
    cli.ok(&["up", "dev"]);
    let first = cli.ok(&["snapshot", "dev"]);
    assert!(
        describe(&first).contains("Copying it to us-west-2"),
        "{}",
        describe(&first)
    );
    let home = images(&cli, "us-east-1");
    let west = images(&cli, "us-west-2");
    assert_eq!((home.len(), west.len()), (1, 1), "{home:?} {west:?}");
    let tags = &west[0]["tags"];
    assert_eq!(tags["spotkeeper:owner"], "clitest");
    assert_eq!(
        tags["spotkeeper:created"],
        home[0]["tags"]["spotkeeper:created"]
    );
    assert_eq!(
        tags["spotkeeper:copy-of"],
        format!("us-east-1/{}", home[0]["id"].as_str().expect("id"))
    );
    // A second image a second later: each region keeps the newest one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    cli.ok(&["snapshot", "dev"]);
    let (home2, west2) = (images(&cli, "us-east-1"), images(&cli, "us-west-2"));
    assert_eq!((home2.len(), west2.len()), (1, 1), "{home2:?} {west2:?}");
    assert_ne!(west2[0]["id"], west[0]["id"]);
    assert_eq!(
        west2[0]["tags"]["spotkeeper:copy-of"],
        format!("us-east-1/{}", home2[0]["id"].as_str().expect("id"))
    );
}

/// `setup` makes the event queue and its rules in every region a box lists
/// (EventBridge delivers a region's EC2 events in that region), once;
/// `cleanup` removes them from each; the policy's queue and rule ARNs name
/// no region, so one policy serves all of them.
#[test]
fn setup_and_cleanup_cover_every_region_of_the_boxes() {
    let cli = Cli::with_config(&with(REPLICATED));
    let queues = |region: &str| {
        in_region(
            &cli,
            region,
            "print(json.dumps([u.rsplit('/', 1)[-1] for u in sqs.list_queues().get('QueueUrls', [])]))",
        )
    };
    let rules = |region: &str| {
        in_region(
            &cli,
            region,
            "print(json.dumps(sorted(r['Name'] for r in eb.list_rules()['Rules'])))",
        )
    };
    let first = cli.json(&["setup", "--json"]);
    let west = &first["regions"][0];
    assert_eq!(west["region"], "us-west-2", "{first}");
    assert_eq!(west["queue_created"], true, "{first}");
    assert!(
        west["queue_arn"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:sqs:us-west-2:")),
        "{first}"
    );
    assert_eq!(
        queues("us-west-2"),
        serde_json::json!(["spotkeeper-clitest-events"])
    );
    assert_eq!(rules("us-west-2"), rules("us-east-1"));
    assert!(!rules("us-west-2").as_array().expect("rules").is_empty());
    let again = cli.json(&["setup", "--json"]);
    assert_eq!(
        again["regions"][0]["queue_created"], false,
        "found, not made twice"
    );
    for statement in first["iam_policy"]["Statement"]
        .as_array()
        .expect("statements")
    {
        let resources = match &statement["Resource"] {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        for r in resources.iter().filter_map(Value::as_str) {
            if r.starts_with("arn:aws:sqs:") || r.starts_with("arn:aws:events:") {
                assert_eq!(r.split(':').nth(3), Some("*"), "{r} pins a region");
            }
        }
    }
    let gone = cli.json(&["cleanup", "--json"]);
    assert!(
        gone.as_array()
            .expect("lines")
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.ends_with("(in us-west-2)"))),
        "{gone}"
    );
    assert_eq!(queues("us-west-2"), serde_json::json!([]));
    assert_eq!(rules("us-west-2"), serde_json::json!([]));
    assert_eq!(queues("us-east-1"), serde_json::json!([]));
}
