//! A box leaves its home region when launches there fail for want of
//! capacity, and comes back (one emulator answers every region). The
//! emulator keeps each volume's contents (a directory per volume, carried by
//! CreateSnapshot, CopySnapshot and CreateVolume from a snapshot, as EBS
//! does), so the test writes files on the box's disk and reads them where
//! the box lands: what was on the volume when its last replica was taken
//! comes along to the other region; what was written there comes home.

use std::time::Duration;

use serde_json::Value;
use spotkeeper_testkit::eventually;
use spotkeeper_testkit::{Answer, Receiver};

use crate::common::{CONFIG, Cli, Serve, describe, http_get};
use crate::daemon_on_emulator::record;
use crate::regions_on_emulator::in_region;

const TOKEN: &str = "failover-token-0123456789";

fn config(api_port: u16, sink: &str) -> String {
    CONFIG
        .replace(
            "[aws]",
            &format!(
                "[daemon]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
                 token = \"{TOKEN}\"\n\n[[notify]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{sink}\"\n\n[aws]"
            ),
        )
        .replace(
            "tags =",
            "regions = [\"us-east-1\", \"us-west-2\"]\n\
             failover_after = \"0s\"\nreturn_after = \"20s\"\n\
             data_volume = { name = \"dev-data\", size_gb = 5, mount = \"/data\", replicate = \"1h\", keep = 3 }\n\
             dns = { zone = \"example.com\", name = \"dev.example.com\" }\ntags =",
        )
        + "\n[cost]\non_demand = { \"t3.micro\" = 0.0104, \"t3a.micro\" = 0.0094 }\n"
}

/// The box's live instances in `region`: id and public address.
fn live(cli: &Cli, region: &str) -> Vec<(String, String)> {
    let v = in_region(
        cli,
        region,
        "r = c.describe_instances(Filters=[{'Name': 'tag:spotkeeper:box', 'Values': ['dev']}, \
         {'Name': 'instance-state-name', 'Values': ['pending', 'running']}])['Reservations']\n\
         print(json.dumps([[i['InstanceId'], i.get('PublicIpAddress', '')] for x in r for i in x['Instances']]))",
    );
    serde_json::from_value(v).expect("pairs")
}

/// The box's live instance in `region`, when it is not being replaced.
fn live_in(cli: &Cli, region: &str) -> Option<(String, String)> {
    let all = live(cli, region);
    assert!(all.len() <= 1, "two live instances in {region}: {all:?}");
    all.into_iter().next()
}

/// A spot interruption warning for `instance`, shaped as EventBridge sends
/// it, into the event queue `setup` made in `region`.
fn warn_in(cli: &Cli, region: &str, instance: &str) {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let body = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/fixtures/events/spot-interruption-warning.json"
    ))
    .expect("fixture")
    .replace("i-1234567890abcdef0", instance)
    .replace("2026-11-02T09:59:19Z", &now)
    .replace("\"us-east-1\"", &format!("\"{region}\""));
    in_region(
        cli,
        region,
        &format!(
            "u = sqs.get_queue_url(QueueName='spotkeeper-clitest-events')['QueueUrl']\n\
             sqs.send_message(QueueUrl=u, MessageBody={})\nprint('{{}}')",
            serde_json::to_string(&body).expect("quoted")
        ),
    );
}

/// The box's data volumes in `region` (id, attached to, tags), stale ones too.
fn volumes_in(cli: &Cli, region: &str) -> Vec<Value> {
    in_region(
        cli,
        region,
        "r = c.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\n\
         print(json.dumps([{'id': v['VolumeId'], 'on': [a['InstanceId'] for a in v.get('Attachments', [])], \
         'tags': {t['Key']: t['Value'] for t in v.get('Tags', [])}} for v in r]))",
    )
    .as_array()
    .expect("array")
    .clone()
}

/// The volume of `dev-data` attached to `instance` in `region`.
fn attached(cli: &Cli, region: &str, instance: &str) -> String {
    let all = volumes_in(cli, region);
    all.iter()
        .find(|v| {
            v["on"]
                .as_array()
                .is_some_and(|on| on.iter().any(|i| i == instance))
        })
        .and_then(|v| v["id"].as_str())
        .unwrap_or_else(|| panic!("no dev-data attached to {instance} in {region}: {all:?}"))
        .to_owned()
}

fn the_box(api_port: u16) -> Value {
    let answer = http_get(api_port, "/api/boxes", Some(TOKEN)).expect("API");
    let body: Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").expect("body").1).expect("json");
    body.as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == "dev").cloned())
        .unwrap_or_else(|| panic!("{body}"))
}

/// The box as the API shows it once it shows it in `region`: the API
/// answers from the daemon's last observation, which a later pass than the
/// move's brings up to date.
fn the_box_in(api_port: u16, region: &str) -> Value {
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || Some(the_box(api_port)).filter(|b| b["region"] == region),
        || {
            format!(
                "the API never showed the box in {region}: {}",
                the_box(api_port)
            )
        },
    )
}

/// A box in us-east-1 with a file on its volume before its replica was
/// copied to us-west-2 (with the box's image) and one after; then us-east-1
/// has no capacity and the box's instance is taken, and a daemon runs.
fn taken_at_home(cli: &Cli, image: bool) -> Serve {
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='f')");
    cli.ok(&["setup"]);
    let up = cli.json(&["up", "dev", "--json"]);
    let home = up["instance_id"].as_str().expect("id").to_owned();
    let home_volume = attached(cli, "us-east-1", &home);
    std::fs::write(
        cli.moto.disk(&home_volume).join("before.txt"),
        "written at home",
    )
    .expect("write on the volume");
    // The box's image, copied to us-west-2 (its AMI id names nothing there),
    // and the replica of its volume there.
    if image {
        cli.ok(&["snapshot", "dev"]);
    }
    cli.ok(&["replicate", "dev"]);
    std::fs::write(
        cli.moto.disk(&home_volume).join("after.txt"),
        "after the copy",
    )
    .expect("write on the volume");
    cli.moto.set_market(&[], &["us-east-1"]);
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{home}'])"));
    Serve::start(cli)
}

/// The messages of the box's events of `kind`, oldest first.
fn said(cli: &Cli, kind: &str) -> Vec<Vec<String>> {
    cli.state_rows(&format!(
        "SELECT message FROM events WHERE box = 'dev' AND kind = '{kind}' ORDER BY id"
    ))
}

/// Whether the daemon has said it replaced the box with `instance`: its
/// launch, its volume's attachment and its name's move are done.
fn replaced(cli: &Cli, instance: &str) -> bool {
    said(cli, "replaced")
        .iter()
        .any(|m| m[0].contains(instance))
}

/// The box's instance in us-west-2, once the daemon has finished moving it
/// there (its volume attached, its name pointed at it: `replaced`).
fn up_in_west(cli: &Cli, serve: &Serve) -> (String, String) {
    eventually(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let (id, ip) = live_in(cli, "us-west-2")?;
            replaced(cli, &id).then_some((id, ip))
        },
        || format!("the box never came up in us-west-2:\n{}", serve.log()),
    )
}

#[test]
fn a_box_fails_over_with_its_replicated_data_and_dns_and_returns_with_what_it_wrote_there() {
    let api_port = spotkeeper_testkit::closed_port();
    // A sink with the default kinds.
    let receiver = Receiver::start(Answer::Ok, 0);
    let cli = Cli::with_config(&config(api_port, &receiver.url("/hook")));
    let serve = taken_at_home(&cli, true);
    let (west, west_ip) = up_in_west(&cli, &serve);
    // From the copied replica: what was written before the copy, not after.
    let west_volume = attached(&cli, "us-west-2", &west);
    let disk = cli.moto.disk(&west_volume);
    assert_eq!(
        std::fs::read_to_string(disk.join("before.txt"))
            .ok()
            .as_deref(),
        Some("written at home")
    );
    assert!(
        !disk.join("after.txt").exists(),
        "written after the last copy"
    );
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || (record(&cli) == west_ip).then_some(()),
        || format!("DNS is {} not {west_ip}:\n{}", record(&cli), serve.log()),
    );
    let failover = said(&cli, "region-failover");
    assert_eq!(failover.len(), 1, "{failover:?}");
    assert!(
        failover[0][0].contains("from us-east-1 to us-west-2")
            && failover[0][0].contains("its data is "),
        "{failover:?}"
    );
    let shown = the_box_in(api_port, "us-west-2");
    assert_eq!(shown["away"], true, "{shown}");
    assert_eq!(shown["instance_id"], west.as_str(), "{shown}");
    assert!(live_in(&cli, "us-east-1").is_none());
    // `list` names the region each instance runs in.
    let listed = cli.live();
    assert!(
        listed
            .iter()
            .any(|i| i["instance_id"] == west.as_str() && i["region"] == "us-west-2"),
        "{listed:?}"
    );

    // A spot warning for it comes through the event queue of us-west-2
    // (EventBridge delivers there): replaced there at once, same volume.
    warn_in(&cli, "us-west-2", &west);
    let (again, _) = eventually(
        Duration::from_secs(60),
        Duration::from_millis(250),
        // Its replacement alone, once `replaced` names it (its volume
        // attached): the warned instance lives on until the replacement is
        // up, as it would on AWS for two minutes.
        || match live(&cli, "us-west-2").as_slice() {
            [(i, ip)] if *i != west && replaced(&cli, i) => Some((i.clone(), ip.clone())),
            _ => None,
        },
        || format!("no replacement in us-west-2:\n{}", serve.log()),
    );
    assert_eq!(attached(&cli, "us-west-2", &again), west_volume);
    let warned = said(&cli, "spot-interruption");
    assert!(warned.iter().any(|m| m[0].contains(&west)), "{warned:?}");

    // Written in us-west-2; then us-east-1 has capacity again.
    std::fs::write(disk.join("west.txt"), "written away").expect("write on the volume");
    // Copies across regions take a while (here 3 s): the return waits for
    // them pass after pass, never inside one.
    cli.moto.set_copying_for(Duration::from_secs(3));
    cli.moto.set_market(&[], &[]);
    // Back once the return is recorded: after its launch, the volume's
    // attachment and the name's move.
    let (back, back_ip) = eventually(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || live_in(&cli, "us-east-1").filter(|_| !said(&cli, "region-return").is_empty()),
        || format!("the box never came back:\n{}", serve.log()),
    );
    // The pass that found a copy under way went on to other work.
    let log = serve.log();
    assert!(
        log.contains("returning home: copying") && log.contains("the last copy home"),
        "{log}"
    );
    let returned = said(&cli, "region-return");
    assert_eq!(returned.len(), 1, "{returned:?}\n{}", serve.log());
    assert!(returned[0][0].contains("came with it"), "{returned:?}");
    let home_disk = cli.moto.disk(&attached(&cli, "us-east-1", &back));
    assert_eq!(
        std::fs::read_to_string(home_disk.join("west.txt"))
            .ok()
            .as_deref(),
        Some("written away")
    );
    assert!(home_disk.join("before.txt").exists());
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || (record(&cli) == back_ip).then_some(()),
        || format!("DNS is {} not {back_ip}:\n{}", record(&cli), serve.log()),
    );
    assert!(live_in(&cli, "us-west-2").is_none(), "left running away");
    assert!(
        volumes_in(&cli, "us-west-2").is_empty(),
        "{:?}",
        volumes_in(&cli, "us-west-2")
    );
    let home_volumes = volumes_in(&cli, "us-east-1");
    assert_eq!(
        home_volumes.len(),
        1,
        "the stale home volume is gone: {home_volumes:?}"
    );
    let shown = the_box_in(api_port, "us-east-1");
    assert_eq!(shown["away"], false, "{shown}");
    // Both moves reached the notification sink (default kinds), while the
    // daemon runs: one stopped sooner sends what is left when it runs again.
    receiver.wait_for(Duration::from_secs(20), "both moves notified", |got| {
        ["\"region-failover\"", "\"region-return\""]
            .iter()
            .all(|k| got.iter().any(|r| r.body.contains(k)))
    });
    assert!(serve.stop().success());
    // `cost` counts the spend in each region.
    let cost = cli.json(&["cost", "--json"]);
    let regions: Vec<&str> = cost["regions"]
        .as_array()
        .expect("regions")
        .iter()
        .filter_map(|r| r["subject"].as_str())
        .collect();
    assert_eq!(regions, ["us-east-1", "us-west-2"], "{cost}");
}

/// An AMI id names an image in one region: without the box's own image
/// copied to us-west-2 the box is not launched there from the id (AWS would
/// refuse it; the emulator would not), says why once, and keeps trying at
/// home.
#[test]
fn without_an_image_in_the_other_region_the_box_does_not_fail_over_and_says_why() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config(api_port, "http://127.0.0.1:9/hook"));
    let serve = taken_at_home(&cli, false);
    let failed = eventually(
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let rows = said(&cli, "failover-failed");
            (!rows.is_empty()).then_some(rows)
        },
        || format!("no failover-failed event:\n{}", serve.log()),
    );
    assert!(
        failed[0][0].contains("no image of the box in us-west-2"),
        "{failed:?}"
    );
    crate::common::wait_passes(api_port, 3, &serve);
    assert!(live_in(&cli, "us-west-2").is_none());
    assert!(volumes_in(&cli, "us-west-2").is_empty());
    // Said once, not at every try; and home is still tried: its capacity
    // comes back first here.
    let again = said(&cli, "failover-failed");
    assert_eq!(again.len(), 1, "{again:?}");
    cli.moto.set_market(&[], &[]);
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || live_in(&cli, "us-east-1"),
        || format!("the box never came back at home:\n{}", serve.log()),
    );
    assert!(serve.stop().success());
}

/// `stop` of a box that lives in its other region takes it down there and
/// brings its data home; until then `up` at home refuses the older copy.
#[test]
fn stop_takes_down_a_box_away_and_brings_its_data_home_and_up_refuses_the_stale_copy() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config(api_port, "http://127.0.0.1:9/hook"));
    let serve = taken_at_home(&cli, true);
    let (west, _) = up_in_west(&cli, &serve);
    assert!(serve.stop().success());
    std::fs::write(
        cli.moto
            .disk(&attached(&cli, "us-west-2", &west))
            .join("west.txt"),
        "written away",
    )
    .expect("write on the volume");
    cli.moto.set_market(&[], &[]);
    let refused = cli.run(&["up", "dev"]);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(
        describe(&refused).contains("its data lives in us-west-2"),
        "{}",
        describe(&refused)
    );
    assert!(live_in(&cli, "us-east-1").is_none(), "nothing launched");
    cli.ok(&["stop", "dev"]);
    assert!(live_in(&cli, "us-west-2").is_none());
    assert!(volumes_in(&cli, "us-west-2").is_empty());
    let home: Vec<Value> = volumes_in(&cli, "us-east-1")
        .into_iter()
        .filter(|v| v["tags"].get("spotkeeper:returned").is_none())
        .collect();
    assert_eq!(home.len(), 1, "{home:?}");
    let disk = cli.moto.disk(home[0]["id"].as_str().expect("id"));
    assert_eq!(
        std::fs::read_to_string(disk.join("west.txt"))
            .ok()
            .as_deref(),
        Some("written away")
    );
    // Up again: at home, on the data written away.
    let up = cli.json(&["up", "dev", "--json"]);
    let again = up["instance_id"].as_str().expect("id");
    assert_eq!(
        attached(&cli, "us-east-1", again),
        home[0]["id"].as_str().expect("id")
    );
}

/// A box without a data volume has nothing to carry: it fails over as soon
/// as home launches fail (the box's image copied there), and comes back by
/// launching at home first, then ending its instance away (no downtime).
#[test]
fn a_box_without_data_fails_over_and_comes_back_launching_home_first() {
    let api_port = spotkeeper_testkit::closed_port();
    let config = config(api_port, "http://127.0.0.1:9/hook").replace(
        "data_volume = { name = \"dev-data\", size_gb = 5, mount = \"/data\", replicate = \"1h\", keep = 3 }\n",
        "",
    );
    assert!(!config.contains("data_volume"), "{config}");
    let cli = Cli::with_config(&config);
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='s')");
    cli.ok(&["setup"]);
    let up = cli.json(&["up", "dev", "--json"]);
    let home = up["instance_id"].as_str().expect("id").to_owned();
    cli.ok(&["snapshot", "dev"]);
    cli.moto.set_market(&[], &["us-east-1"]);
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{home}'])"));
    let serve = Serve::start(&cli);
    let (west, west_ip) = up_in_west(&cli, &serve);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || (record(&cli) == west_ip).then_some(()),
        || format!("DNS is {} not {west_ip}:\n{}", record(&cli), serve.log()),
    );
    cli.moto.set_market(&[], &[]);
    let (back, back_ip) = eventually(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || live_in(&cli, "us-east-1").filter(|_| !said(&cli, "region-return").is_empty()),
        || format!("the box never came back:\n{}", serve.log()),
    );
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || live_in(&cli, "us-west-2").is_none().then_some(()),
        || format!("{west} still runs in us-west-2:\n{}", serve.log()),
    );
    assert_ne!(back, home);
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        || (record(&cli) == back_ip).then_some(()),
        || format!("DNS is {} not {back_ip}:\n{}", record(&cli), serve.log()),
    );
    let moves = cli.state_rows(
        "SELECT kind, message FROM events WHERE box = 'dev' AND kind LIKE 'region-%' ORDER BY id",
    );
    let kinds: Vec<&str> = moves.iter().map(|m| m[0].as_str()).collect();
    assert_eq!(kinds, ["region-failover", "region-return"], "{moves:?}");
    assert!(moves[0][1].contains("it has no data volume"), "{moves:?}");
    assert!(serve.stop().success());
}
