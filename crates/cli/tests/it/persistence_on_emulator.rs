//! Boxes that keep their disk, their name and a fresh image, end to end on
//! the emulator: data and root volumes, on_stop policies, moving a volume to
//! a cheaper zone, Route53 records, Elastic IPs, images and `box:latest`.

use crate::common::{CONFIG, Cli, describe, stderr};
use serde_json::Value;

fn with(extra: &str) -> String {
    CONFIG.replace("tags =", &format!("{extra}\ntags ="))
}

const DATA: &str = r#"data_volume = { name = "dev-data", size_gb = 10, mount = "/data" }"#;

/// The emulator's volumes named `name`: (id, zone, state, attached instance, device, snapshot).
fn volumes(cli: &Cli, name: &str) -> Vec<Value> {
    let out = cli.moto.boto(&format!(
        "r = ec2.describe_volumes(Filters=[{{'Name': 'tag:Name', 'Values': ['{name}']}}])['Volumes']\n\
         print(json.dumps([{{'id': v['VolumeId'], 'zone': v['AvailabilityZone'], 'state': v['State'], \
         'instance': (v['Attachments'][0]['InstanceId'] if v['Attachments'] else None), \
         'device': (v['Attachments'][0]['Device'] if v['Attachments'] else None), \
         'snapshot': v.get('SnapshotId') or None, 'tags': {{t['Key']: t['Value'] for t in v.get('Tags', [])}}}} for v in r]))"
    ));
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

fn snapshots(cli: &Cli, name: &str) -> Vec<Value> {
    let out = cli.moto.boto(&format!(
        "r = ec2.describe_snapshots(OwnerIds=['self'], Filters=[{{'Name': 'tag:spotkeeper:volume', 'Values': ['{name}']}}])['Snapshots']\n\
         print(json.dumps([{{'id': s['SnapshotId'], 'tags': {{t['Key']: t['Value'] for t in s.get('Tags', [])}}}} for s in r]))"
    ));
    serde_json::from_str::<Value>(&out)
        .expect("json")
        .as_array()
        .expect("array")
        .clone()
}

fn terminate(cli: &Cli, id: &str) {
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{id}'])"));
}

#[test]
fn a_data_volume_is_created_once_and_reattached_by_the_next_up_after_stop() {
    let cli = Cli::with_config(&with(DATA));
    let first = cli.json(&["up", "dev", "--json"]);
    let vols = volumes(&cli, "dev-data");
    assert_eq!(vols.len(), 1, "{vols:?}");
    let vol = vols[0].clone();
    assert_eq!(vol["instance"], first["instance_id"]);
    assert_eq!(vol["device"], "/dev/sdf");
    assert_eq!(vol["zone"], first["zone"], "created in the launch zone");
    assert_eq!(vol["tags"]["spotkeeper:box"], "dev");
    assert_eq!(vol["tags"]["spotkeeper:owner"], "clitest");
    let user_data = cli.moto.boto(&format!(
        "import base64\nr = ec2.describe_instance_attribute(InstanceId='{}', Attribute='userData')\nprint(base64.b64decode(r['UserData']['Value']).decode())",
        first["instance_id"].as_str().expect("id")
    ));
    assert!(
        user_data.contains(&format!(
            "SK_DATA_VOLUME:={}",
            vol["id"].as_str().expect("id")
        )),
        "{user_data}"
    );
    assert!(
        !user_data.contains("testing"),
        "no credentials in user data"
    );
    // Created empty: the first boot may make its filesystem; once the box
    // got ready on it, the volume is no longer new.
    assert!(user_data.contains("SK_DATA_NEW:=1}"), "{user_data}");
    assert_eq!(vol["tags"].get("spotkeeper:new"), None, "{vol}");

    let stop = cli.ok(&["stop", "dev"]);
    assert!(
        stderr(&stop).contains("Kept data_volume"),
        "{}",
        describe(&stop)
    );
    let after = volumes(&cli, "dev-data");
    assert_eq!(after.len(), 1);
    assert_eq!(after[0]["instance"], Value::Null, "detached, kept");

    let second = cli.json(&["up", "dev", "--json"]);
    assert_ne!(second["instance_id"], first["instance_id"]);
    let again = volumes(&cli, "dev-data");
    assert_eq!(again.len(), 1, "never a second volume: {again:?}");
    assert_eq!(again[0]["id"], vol["id"]);
    assert_eq!(again[0]["instance"], second["instance_id"]);
    assert_eq!(second["zone"], vol["zone"], "launched in the volume's zone");
    let user_data = user_data_of(&cli, second["instance_id"].as_str().expect("id"));
    assert!(
        user_data.contains("SK_DATA_NEW:=0}"),
        "a used volume is never formatted: {user_data}"
    );
}

fn user_data_of(cli: &Cli, instance: &str) -> String {
    cli.moto.boto(&format!(
        "import base64\nr = ec2.describe_instance_attribute(InstanceId='{instance}', Attribute='userData')\nprint(base64.b64decode(r['UserData']['Value']).decode())"
    ))
}

#[test]
fn on_stop_snapshot_saves_the_volume_and_the_next_up_restores_it() {
    let cli = Cli::with_config(&with(&DATA.replace(
        "mount = \"/data\"",
        "mount = \"/data\", on_stop = \"snapshot\"",
    )));
    cli.ok(&["up", "dev"]);
    let vol = volumes(&cli, "dev-data")[0]["id"].clone();
    let out = cli.ok(&["stop", "dev", "--no-wait"]);
    assert!(
        stderr(&out).contains("Saved data_volume"),
        "{}",
        describe(&out)
    );
    assert!(volumes(&cli, "dev-data").is_empty(), "the volume is gone");
    let snaps = snapshots(&cli, "dev-data");
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["tags"]["spotkeeper:purpose"], "stop");

    cli.ok(&["up", "dev"]);
    let restored = volumes(&cli, "dev-data");
    assert_eq!(restored.len(), 1);
    assert_ne!(restored[0]["id"], vol);
    assert_eq!(
        restored[0]["snapshot"], snaps[0]["id"],
        "restored from the stop snapshot"
    );
}

#[test]
fn on_stop_snapshot_keeps_only_keep_snapshots_per_volume() {
    let cli = Cli::with_config(&with(&DATA.replace(
        "mount = \"/data\"",
        "mount = \"/data\", on_stop = \"snapshot\", keep = 2",
    )));
    let mut made = Vec::new();
    for round in 0..3 {
        cli.ok(&["up", "dev"]);
        let before: Vec<Value> = snapshots(&cli, "dev-data");
        let out = cli.ok(&["stop", "dev", "--no-wait"]);
        let now = snapshots(&cli, "dev-data");
        let new: Vec<&Value> = now
            .iter()
            .filter(|s| !before.iter().any(|b| b["id"] == s["id"]))
            .collect();
        assert_eq!(new.len(), 1, "round {round}: {now:?}");
        made.push(new[0]["id"].clone());
        if round == 2 {
            assert!(
                stderr(&out).contains("Deleted 1 older stop snapshot(s) of dev-data (keep = 2)"),
                "{}",
                describe(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct start times
    }
    let mut left: Vec<Value> = snapshots(&cli, "dev-data")
        .iter()
        .map(|s| s["id"].clone())
        .collect();
    left.sort_by_key(|v| v.to_string());
    let mut want = made[1..].to_vec();
    want.sort_by_key(|v| v.to_string());
    assert_eq!(
        left, want,
        "the oldest stop snapshot is gone, the newest two stay"
    );
}

#[test]
fn on_stop_delete_removes_the_volume() {
    let cli = Cli::with_config(&with(&DATA.replace(
        "mount = \"/data\"",
        "mount = \"/data\", on_stop = \"delete\"",
    )));
    cli.ok(&["up", "dev"]);
    let out = cli.ok(&["stop", "dev"]);
    assert!(
        stderr(&out).contains("Deleted data_volume"),
        "{}",
        describe(&out)
    );
    assert!(volumes(&cli, "dev-data").is_empty());
    assert!(snapshots(&cli, "dev-data").is_empty());
}

#[test]
fn the_volume_pins_the_zone_unless_it_may_move_and_a_move_leaves_one_volume_with_its_lineage() {
    let cli = Cli::with_config(&with(DATA));
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.01)),
            ("t3a.micro", Some(0.01)),
            ("t3.micro/us-east-1a", Some(0.002)),
        ],
        &[],
    );
    let first = cli.json(&["up", "dev", "--json"]);
    assert_eq!(first["zone"], "us-east-1a");
    cli.ok(&["stop", "dev"]);

    // Zone b turns cheaper; without move_volume the box stays with its disk.
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.01)),
            ("t3a.micro", Some(0.01)),
            ("t3.micro/us-east-1b", Some(0.001)),
        ],
        &[],
    );
    let pinned = cli.json(&["up", "dev", "--json"]);
    assert_eq!(pinned["zone"], "us-east-1a");
    cli.ok(&["stop", "dev"]);
    let original = volumes(&cli, "dev-data")[0].clone();

    cli.write_config(&with(&format!("{DATA}\nmove_volume = true")));
    let moved = cli.run(&["up", "dev", "--json"]);
    assert!(moved.status.success(), "{}", describe(&moved));
    assert!(
        stderr(&moved).contains("Moved data_volume"),
        "{}",
        describe(&moved)
    );
    let inst: Value = serde_json::from_slice(&moved.stdout).expect("json");
    assert_eq!(inst["zone"], "us-east-1b");
    let vols = volumes(&cli, "dev-data");
    assert_eq!(vols.len(), 1, "exactly one volume after the move: {vols:?}");
    let v = &vols[0];
    assert_eq!(
        (v["zone"].as_str(), v["instance"].clone()),
        (Some("us-east-1b"), inst["instance_id"].clone())
    );
    assert_ne!(v["id"], original["id"]);
    assert!(
        v["tags"].get("spotkeeper:moving-from").is_none(),
        "the move completed: {v}"
    );
    let snaps = snapshots(&cli, "dev-data");
    assert!(
        snaps
            .iter()
            .any(|s| s["id"] == v["snapshot"] && s["tags"]["spotkeeper:purpose"] == "move"),
        "lineage: {v} from {snaps:?}"
    );
}

#[test]
fn a_half_done_move_is_undone_and_resumed() {
    let cli = Cli::with_config(&with(&format!("{DATA}\nmove_volume = true")));
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.01)),
            ("t3a.micro", Some(0.01)),
            ("t3.micro/us-east-1a", Some(0.002)),
        ],
        &[],
    );
    cli.ok(&["up", "dev"]);
    cli.ok(&["stop", "dev"]);
    let original = volumes(&cli, "dev-data")[0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A crash left an unattached copy in zone b.
    cli.moto.boto(&format!(
        "ec2.create_volume(AvailabilityZone='us-east-1b', Size=10, TagSpecifications=[{{'ResourceType': 'volume', 'Tags': [\
         {{'Key': 'Name', 'Value': 'dev-data'}}, {{'Key': 'spotkeeper:owner', 'Value': 'clitest'}}, {{'Key': 'spotkeeper:moving-from', 'Value': '{original}'}}]}}])"
    ));
    assert_eq!(volumes(&cli, "dev-data").len(), 2);
    let inst = cli.json(&["up", "dev", "--json"]);
    let vols = volumes(&cli, "dev-data");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(
        vols[0]["id"].as_str(),
        Some(original.as_str()),
        "the original stays the truth"
    );
    assert_eq!(vols[0]["instance"], inst["instance_id"]);
}

#[test]
fn a_root_volume_is_made_from_the_image_and_attached_for_the_pivot_root_chain() {
    let cli = Cli::with_config(
        &with(r#"root_volume = { name = "dev-root" }"#)
            .replace("ami-0123456789abcdef0", "ami-785db401"),
    );
    let inst = cli.json(&["up", "dev", "--json"]);
    let vols = volumes(&cli, "dev-root");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0]["device"], "/dev/sdg");
    assert_eq!(vols[0]["instance"], inst["instance_id"]);
    assert!(
        vols[0]["snapshot"]
            .as_str()
            .is_some_and(|s| s.starts_with("snap-")),
        "made from the image's root snapshot"
    );
    let user_data = cli.moto.boto(&format!(
        "import base64\nr = ec2.describe_instance_attribute(InstanceId='{}', Attribute='userData')\nprint(base64.b64decode(r['UserData']['Value']).decode())",
        inst["instance_id"].as_str().expect("id")
    ));
    assert!(user_data.contains("pivot_root . old-root"), "{user_data}");
}

#[test]
fn a_volume_name_matching_two_volumes_or_a_missing_dns_zone_stops_up_before_any_launch() {
    let cli = Cli::with_config(&with(DATA));
    cli.moto.boto(
        "for z in ['us-east-1a', 'us-east-1b']:\n    ec2.create_volume(AvailabilityZone=z, Size=1, TagSpecifications=[{'ResourceType': 'volume', 'Tags': [{'Key': 'Name', 'Value': 'dev-data'}, {'Key': 'spotkeeper:owner', 'Value': 'clitest'}]}])",
    );
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("data_volume name \"dev-data\" matches 2 volumes"),
        "{}",
        describe(&out)
    );
    assert!(cli.live().is_empty());

    let cli = Cli::with_config(&with(
        r#"dns = { zone = "nowhere.example", name = "dev.nowhere.example" }"#,
    ));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("hosted zone nowhere.example. not found"),
        "{}",
        describe(&out)
    );
    assert!(cli.live().is_empty());

    let cli = Cli::with_config(&with(
        "data_volume = { name = \"same\", size_gb = 1 }\nroot_volume = { name = \"same\" }",
    ));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("both named"), "{}", describe(&out));
}

fn record(cli: &Cli, zone_id: &str) -> Option<String> {
    let out = cli.moto.boto(&format!(
        "r = r53.list_resource_record_sets(HostedZoneId='{zone_id}')['ResourceRecordSets']\n\
         a = [x['ResourceRecords'][0]['Value'] for x in r if x['Type'] == 'A' and x['Name'] == 'dev.example.com.']\n\
         print(a[0] if a else '')"
    ));
    Some(out.trim().to_owned()).filter(|s| !s.is_empty())
}

/// The ownership mark beside `dev.example.com`, if any.
fn mark(cli: &Cli, zone_id: &str) -> Option<String> {
    let out = cli.moto.boto(&format!(
        "r = r53.list_resource_record_sets(HostedZoneId='{zone_id}')['ResourceRecordSets']\n\
         t = [x['ResourceRecords'][0]['Value'] for x in r if x['Type'] == 'TXT' and x['Name'] == '_spotkeeper.dev.example.com.']\n\
         print(t[0] if t else '')"
    ));
    Some(out.trim().to_owned()).filter(|s| !s.is_empty())
}

fn put_foreign_record(cli: &Cli, zone_id: &str, address: &str) {
    cli.moto.boto(&format!(
        "r53.change_resource_record_sets(HostedZoneId='{zone_id}', ChangeBatch={{'Changes': [{{'Action': 'UPSERT', \
         'ResourceRecordSet': {{'Name': 'dev.example.com.', 'Type': 'A', 'TTL': 300, 'ResourceRecords': [{{'Value': '{address}'}}]}}}}]}})"
    ));
}

#[test]
fn a_dns_name_spotkeeper_did_not_create_is_taken_only_when_adopted_and_stop_deletes_only_its_own() {
    let dns = r#"dns = { zone = "example.com", name = "dev.example.com" }"#;
    let cli = Cli::with_config(&with(dns));
    let zone = cli.moto.boto("print(r53.create_hosted_zone(Name='example.com', CallerReference='t')['HostedZone']['Id'].split('/')[-1])");
    let zone = zone.trim();
    put_foreign_record(&cli, zone, "192.0.2.10");

    // Someone else's record: up stops before launching anything.
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains(
            "DNS record dev.example.com. is not this box's to change: spotkeeper did not create it; set adopt = true"
        ),
        "{}",
        describe(&out)
    );
    assert!(cli.live().is_empty(), "nothing launched");
    assert_eq!(record(&cli, zone).as_deref(), Some("192.0.2.10"));
    assert_eq!(mark(&cli, zone), None);

    // stop leaves a record it does not own alone.
    let out = cli.ok(&["stop", "dev"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Left DNS record dev.example.com. (192.0.2.10) alone")
            || String::from_utf8_lossy(&out.stdout)
                .contains("Left DNS record dev.example.com. (192.0.2.10) alone"),
        "{}",
        describe(&out)
    );
    assert_eq!(record(&cli, zone).as_deref(), Some("192.0.2.10"));

    // Adopted: taken over and marked as this owner's box.
    cli.write_config(&with(
        r#"dns = { zone = "example.com", name = "dev.example.com", adopt = true }"#,
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(record(&cli, zone).as_deref(), inst["public_ip"].as_str());
    assert_eq!(
        mark(&cli, zone).as_deref(),
        Some("\"heritage=spotkeeper,spotkeeper/owner=clitest,spotkeeper/box=dev\"")
    );
    let status = cli.json(&["dns", "dev", "--json"]);
    assert_eq!(status["owned"], true, "{status}");

    // Another owner (another spotkeeper on the account) may not take it, adopt or not.
    cli.write_config(
        &with(r#"dns = { zone = "example.com", name = "dev.example.com", adopt = true }"#)
            .replace("owner = \"clitest\"", "owner = \"intruder\""),
    );
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("it belongs to spotkeeper owner clitest"),
        "{}",
        describe(&out)
    );
    let out = cli.ok(&["stop", "dev"]);
    assert_eq!(
        record(&cli, zone).as_deref(),
        inst["public_ip"].as_str(),
        "{}",
        describe(&out)
    );

    // Its own: stop deletes the record and the mark.
    cli.write_config(&with(dns));
    cli.ok(&["stop", "dev"]);
    assert_eq!(record(&cli, zone), None);
    assert_eq!(mark(&cli, zone), None);
}

#[test]
fn dns_follows_the_box_through_a_replacement_and_is_removed_on_stop() {
    let cli = Cli::with_config(&with(
        r#"dns = { zone = "example.com", name = "dev.example.com", ttl = 60 }"#,
    ));
    let zone = cli.moto.boto("print(r53.create_hosted_zone(Name='example.com', CallerReference='t')['HostedZone']['Id'].split('/')[-1])");
    let zone = zone.trim();
    let first = cli.json(&["up", "dev", "--json"]);
    assert_eq!(record(&cli, zone).as_deref(), first["public_ip"].as_str());
    let status = cli.json(&["dns", "dev", "--json"]);
    assert_eq!(status["matches"], true, "{status}");

    // The instance is interrupted; the next up replaces it and moves the name.
    terminate(&cli, first["instance_id"].as_str().expect("id"));
    let stale = cli.json(&["dns", "dev", "--json"]);
    assert_eq!(stale["matches"], false, "{stale}");
    let second = cli.json(&["up", "dev", "--json"]);
    assert_ne!(second["public_ip"], first["public_ip"]);
    assert_eq!(record(&cli, zone).as_deref(), second["public_ip"].as_str());

    assert!(
        mark(&cli, zone).is_some(),
        "the name is marked as the box's"
    );
    cli.ok(&["stop", "dev"]);
    assert_eq!(record(&cli, zone), None, "removed on stop");
    assert_eq!(mark(&cli, zone), None, "with its mark");
    let table = cli.ok(&["dns", "dev"]);
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("(no record)"),
        "{}",
        describe(&table)
    );
}

#[test]
fn keep_dns_keeps_the_record_and_private_addresses_work() {
    let cli = Cli::with_config(&with(
        "dns = { zone = \"example.com\", name = \"dev.example.com\", address = \"private\" }\nkeep_dns = true",
    ));
    let zone = cli.moto.boto("print(r53.create_hosted_zone(Name='example.com.', CallerReference='t')['HostedZone']['Id'].split('/')[-1])");
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(
        record(&cli, zone.trim()).as_deref(),
        inst["private_ip"].as_str()
    );
    cli.ok(&["stop", "dev"]);
    assert_eq!(
        record(&cli, zone.trim()).as_deref(),
        inst["private_ip"].as_str(),
        "kept"
    );
}

#[test]
fn an_elastic_ip_is_associated_with_each_new_instance() {
    let cli = Cli::new();
    let alloc = cli
        .moto
        .boto("print(ec2.allocate_address(Domain='vpc')['AllocationId'])");
    let alloc = alloc.trim();
    cli.write_config(&with(&format!("elastic_ip = \"{alloc}\"")));
    let first = cli.json(&["up", "dev", "--json"]);
    let on = |cli: &Cli| {
        cli.moto.boto(&format!("print(ec2.describe_addresses(AllocationIds=['{alloc}'])['Addresses'][0].get('InstanceId', ''))"))
    };
    assert_eq!(on(&cli).trim(), first["instance_id"].as_str().expect("id"));
    terminate(&cli, first["instance_id"].as_str().expect("id"));
    let second = cli.json(&["up", "dev", "--json"]);
    assert_eq!(on(&cli).trim(), second["instance_id"].as_str().expect("id"));
}

#[test]
fn images_are_created_pruned_to_keep_and_used_by_box_latest() {
    let cli = Cli::with_config(&with("images = { keep = 2 }"));
    let early = cli.run(&["image", "create", "dev"]);
    assert_eq!(
        early.status.code(),
        Some(1),
        "no instance to image yet: {}",
        describe(&early)
    );
    cli.ok(&["up", "dev"]);
    let mut made = Vec::new();
    for _ in 0..3 {
        let out = cli.json(&["image", "create", "dev", "--json"]);
        made.push(out["image"]["id"].as_str().expect("id").to_owned());
        std::thread::sleep(std::time::Duration::from_millis(1100)); // distinct creation times
    }
    let left = cli.moto.boto(
        "r = ec2.describe_images(Owners=['self'], Filters=[{'Name': 'tag:spotkeeper:box', 'Values': ['dev']}])['Images']\nprint(json.dumps(sorted(i['ImageId'] for i in r)))",
    );
    let left: Vec<String> = serde_json::from_str(left.trim()).expect("json");
    let mut want = made[1..].to_vec();
    want.sort();
    assert_eq!(left, want, "the oldest was deregistered");
    let image_snapshots = |cli: &Cli| -> Vec<String> {
        let out = cli.moto.boto(
            "r = ec2.describe_snapshots(OwnerIds=['self'], Filters=[{'Name': 'tag:spotkeeper:box', 'Values': ['dev']}, {'Name': 'tag-key', 'Values': ['spotkeeper:created']}])['Snapshots']\nprint(json.dumps(sorted(s['SnapshotId'] for s in r)))",
        );
        serde_json::from_str(out.trim()).expect("json")
    };
    assert_eq!(
        image_snapshots(&cli).len(),
        2,
        "the pruned image's snapshot went with it"
    );

    // A deletion cut short after the deregistration (AWS calls a snapshot in
    // use for a while after) leaves a snapshot behind; the next prune deletes it.
    let leaked = cli.moto.boto(&format!(
        "i = ec2.describe_images(ImageIds=['{m}'])['Images'][0]\n\
         s = i['BlockDeviceMappings'][0]['Ebs']['SnapshotId']\n\
         ec2.deregister_image(ImageId='{m}')\n\
         ec2.create_tags(Resources=[s], Tags=[{{'Key': 'spotkeeper:created', 'Value': '2020-01-01T00:00:00Z'}}])\n\
         print(s)",
        m = made[1]
    ));
    let leaked = leaked.trim().to_owned();
    assert!(image_snapshots(&cli).contains(&leaked));
    let out = cli.json(&["image", "create", "dev", "--json"]);
    made.push(out["image"]["id"].as_str().expect("id").to_owned());
    let after = image_snapshots(&cli);
    assert!(!after.contains(&leaked), "{after:?}");
    assert_eq!(after.len(), 2, "the live images' snapshots stay: {after:?}");

    cli.ok(&["stop", "dev"]);
    cli.write_config(&with("images = { keep = 2 }").replace(
        "\"ami-0123456789abcdef0\"",
        "\"box:latest\"\nbase_image = \"ami-0123456789abcdef0\"",
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(
        inst["image_id"].as_str(),
        made.last().map(String::as_str),
        "launched from the newest image"
    );
}

/// A volume as the emulator lists it: (id, attached instance, device, Name tag).
type Listed = (String, Option<String>, Option<String>, Option<String>);

/// Every volume in the emulator.
fn all_volumes(cli: &Cli) -> Vec<Listed> {
    let out = cli.moto.boto(
        "r = ec2.describe_volumes()['Volumes']\n\
         print(json.dumps([[v['VolumeId'], (v['Attachments'][0]['InstanceId'] if v['Attachments'] else None), \
         (v['Attachments'][0]['Device'] if v['Attachments'] else None), \
         {t['Key']: t['Value'] for t in v.get('Tags', [])}.get('Name')] for v in r]))",
    );
    serde_json::from_str(out.trim()).expect("json")
}

#[test]
fn an_image_of_a_box_leaves_its_volumes_out_and_a_launch_from_it_has_only_the_boxs_own() {
    // The emulator's launcher plays AWS here: CreateImage snapshots every
    // attached volume into the image unless its device is NoDevice, a launch
    // from the image creates them again, and attaching at a taken device
    // fails. Without NoDevice the launch below would come up with copies at
    // /dev/sdf and /dev/sdg and the real volumes could not be attached.
    let base = with(&format!("{DATA}\nroot_volume = {{ name = \"dev-root\" }}"))
        .replace("ami-0123456789abcdef0", "ami-785db401");
    let cli = Cli::with_config(&base);
    let first = cli.json(&["up", "dev", "--json"]);
    let made = cli.json(&["image", "create", "dev", "--json"]);
    let image = made["image"]["id"].as_str().expect("image id").to_owned();
    let mappings = cli.moto.boto(&format!(
        "i = ec2.describe_images(ImageIds=['{image}'])['Images'][0]\n\
         print(json.dumps(sorted(m['DeviceName'] for m in i['BlockDeviceMappings'])))"
    ));
    let mappings: Vec<String> = serde_json::from_str(mappings.trim()).expect("json");
    assert_eq!(
        mappings,
        ["/dev/sda1"],
        "only the instance's root disk is in the image"
    );

    cli.ok(&["stop", "dev"]);
    cli.write_config(&base.replace(
        "\"ami-785db401\"",
        "\"box:latest\"\nbase_image = \"ami-785db401\"",
    ));
    let second = cli.json(&["up", "dev", "--json"]);
    assert_eq!(second["image_id"].as_str(), Some(image.as_str()));
    assert_ne!(second["instance_id"], first["instance_id"]);
    let id = second["instance_id"].as_str().expect("id");
    let mut on_it: Vec<(String, Option<String>)> = all_volumes(&cli)
        .into_iter()
        .filter(|v| v.1.as_deref() == Some(id))
        .map(|v| (v.2.unwrap_or_default(), v.3))
        .collect();
    on_it.sort();
    assert_eq!(
        on_it,
        [
            ("/dev/sda1".to_owned(), Some("spotkeeper-dev".to_owned())),
            ("/dev/sdf".to_owned(), Some("dev-data".to_owned())),
            ("/dev/sdg".to_owned(), Some("dev-root".to_owned())),
        ],
        "the new instance has its own root disk and the box's two volumes, nothing else"
    );
    assert_eq!(volumes(&cli, "dev-data").len(), 1);
    assert_eq!(volumes(&cli, "dev-root").len(), 1);
}

#[test]
fn a_box_naming_another_boxs_volume_is_refused_before_launch_and_the_volume_stays() {
    let cli = Cli::with_config(&with(DATA));
    let a = cli.json(&["up", "dev", "--json"]);
    // Another config (a later edit, another machine) names dev's volume for
    // a box of its own.
    cli.write_config(&with(DATA).replace("[box.dev]", "[box.web]"));
    let out = cli.run(&["up", "web"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("data_volume \"dev-data\"")
            && stderr(&out).contains("is box \"dev\"'s"),
        "{}",
        describe(&out)
    );
    let live = cli.live();
    assert_eq!(live.len(), 1, "nothing launched for web: {live:?}");
    assert_eq!(live[0]["instance_id"], a["instance_id"]);
    let vols = volumes(&cli, "dev-data");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(
        vols[0]["instance"], a["instance_id"],
        "dev keeps its volume"
    );
}

#[test]
fn a_volume_spotkeeper_did_not_create_is_used_only_when_adopted_and_never_taken_from_a_foreign_instance()
 {
    // Someone's own volume that happens to have the box's volume name.
    let cli = Cli::with_config(&with(DATA));
    cli.moto.boto(
        "ec2.create_volume(AvailabilityZone='us-east-1a', Size=10, TagSpecifications=[{'ResourceType': 'volume', 'Tags': [{'Key': 'Name', 'Value': 'dev-data'}]}])",
    );
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("was not created by spotkeeper")
            && stderr(&out).contains("adopt = true"),
        "{}",
        describe(&out)
    );
    assert!(cli.live().is_empty(), "nothing launched");
    assert!(
        volumes(&cli, "dev-data")[0]["tags"]
            .get("spotkeeper:owner")
            .is_none(),
        "nothing touched"
    );

    // Adopted: used, and tagged as this owner's.
    cli.write_config(&with(
        r#"data_volume = { name = "dev-data", size_gb = 10, mount = "/data", adopt = true }"#,
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    let vols = volumes(&cli, "dev-data");
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!(vols[0]["instance"], inst["instance_id"]);
    assert_eq!(vols[0]["tags"]["spotkeeper:owner"], "clitest");
    cli.ok(&["stop", "dev"]);

    // Now held by a running instance spotkeeper does not own: never taken.
    let vol = vols[0]["id"].as_str().expect("id").to_owned();
    cli.moto.boto(&format!(
        "i = ec2.run_instances(ImageId='ami-0123456789abcdef0', MinCount=1, MaxCount=1, InstanceType='t3.micro', Placement={{'AvailabilityZone': 'us-east-1a'}})['Instances'][0]['InstanceId']\n\
         ec2.attach_volume(VolumeId='{vol}', InstanceId=i, Device='/dev/sdf')"
    ));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("spotkeeper does not own"),
        "{}",
        describe(&out)
    );
    assert!(cli.live().is_empty(), "nothing launched");
    assert!(
        volumes(&cli, "dev-data")[0]["instance"].is_string(),
        "still attached"
    );
}

#[test]
fn a_public_and_a_private_zone_of_one_name_are_told_apart_or_both_written() {
    let cli = Cli::new();
    let zones = cli.moto.boto(
        "v = ec2.describe_vpcs(Filters=[{'Name': 'is-default', 'Values': ['true']}])['Vpcs'][0]['VpcId']\n\
         pub = r53.create_hosted_zone(Name='example.com', CallerReference='pub')['HostedZone']['Id'].split('/')[-1]\n\
         prv = r53.create_hosted_zone(Name='example.com', CallerReference='prv', HostedZoneConfig={'PrivateZone': True}, VPC={'VPCRegion': 'us-east-1', 'VPCId': v})['HostedZone']['Id'].split('/')[-1]\n\
         print(pub, prv)",
    );
    let mut ids = zones.split_whitespace();
    let (public, private) = (
        ids.next().expect("public").to_owned(),
        ids.next().expect("private").to_owned(),
    );

    // The private zone, with the private address.
    cli.write_config(&with(
        r#"dns = { zone = "example.com", name = "dev.example.com", private = true, address = "private" }"#,
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(
        record(&cli, &private).as_deref(),
        inst["private_ip"].as_str()
    );
    assert_eq!(
        record(&cli, &public),
        None,
        "the public zone is not touched"
    );
    cli.ok(&["stop", "dev"]);
    assert_eq!(record(&cli, &private), None);

    // By default the public one; zone_id names one exactly.
    cli.write_config(&with(
        r#"dns = { zone = "example.com", name = "dev.example.com" }"#,
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(record(&cli, &public).as_deref(), inst["public_ip"].as_str());
    assert_eq!(record(&cli, &private), None);
    cli.ok(&["stop", "dev"]);
    cli.write_config(&with(&format!(
        r#"dns = {{ zone = "example.com", name = "dev.example.com", zone_id = "{private}" }}"#
    )));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(
        record(&cli, &private).as_deref(),
        inst["public_ip"].as_str()
    );
    cli.ok(&["stop", "dev"]);

    // Split-horizon: the public address in the public zone, the private one
    // in the private zone; stop removes both.
    cli.write_config(&with(
        r#"dns = { zone = "example.com", name = "dev.example.com", address = "both" }"#,
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(record(&cli, &public).as_deref(), inst["public_ip"].as_str());
    assert_eq!(
        record(&cli, &private).as_deref(),
        inst["private_ip"].as_str()
    );
    let status = cli.json(&["dns", "dev", "--json"]);
    assert_eq!(status["matches"], true, "{status}");
    cli.ok(&["stop", "dev"]);
    assert_eq!(
        (record(&cli, &public), record(&cli, &private)),
        (None, None)
    );
}
