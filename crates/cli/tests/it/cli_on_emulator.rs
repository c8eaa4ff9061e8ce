//! The `spotkeeper` binary end to end against the AWS emulator (moto) on
//! loopback: `price`, `up`, `list`, `stop`, exit codes and bad input.

use std::path::Path;
use std::process::Command;

use crate::common::{CONFIG, Cli, describe, stderr};
use serde_json::{Value, json};
use spotkeeper_testkit::closed_port;

#[test]
fn up_creates_exactly_one_tagged_spot_instance_and_a_second_up_creates_nothing() {
    let cli = Cli::new();
    let first = cli.ok(&["up", "dev", "--json"]);
    let inst: Value = serde_json::from_slice(&first.stdout).expect("json");
    assert_eq!(inst["box"], "dev");
    assert_eq!(inst["market"], "spot");
    assert_eq!(inst["state"], "running");
    assert_eq!(inst["tags"]["spotkeeper:owner"], "clitest");
    assert_eq!(inst["tags"]["spotkeeper:box"], "dev");
    assert_eq!(inst["tags"]["Name"], "spotkeeper-dev");
    assert_eq!(inst["tags"]["team"], "ml");
    assert!(
        inst["tags"]["spotkeeper:intent"]
            .as_str()
            .is_some_and(|t| t.starts_with("sk-"))
    );
    let progress = stderr(&first);
    assert!(progress.contains("Spot price is"), "{progress}");
    assert!(progress.contains("Instance is running."), "{progress}");

    let second = cli.ok(&["up", "dev"]);
    assert!(
        stderr(&second).contains("Instance exists already"),
        "{}",
        describe(&second)
    );
    let live = cli.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0]["instance_id"], inst["instance_id"]);
}

#[test]
fn list_json_shows_every_documented_field() {
    let cli = Cli::new();
    assert_eq!(cli.live().len(), 0);
    cli.ok(&["up", "dev"]);
    let live = cli.live();
    assert_eq!(live.len(), 1);
    let i = &live[0];
    for key in [
        "box",
        "instance_id",
        "state",
        "instance_type",
        "zone",
        "market",
        "spot_request_id",
        "public_ip",
        "private_ip",
        "launched_at",
    ] {
        assert!(i.get(key).is_some(), "list --json lacks {key}: {i}");
    }
    assert_eq!(i["box"], "dev");
    assert!(
        i["instance_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("i-"))
    );
    assert_eq!(i["market"], "spot");
    assert!(["us-east-1a", "us-east-1b"].contains(&i["zone"].as_str().expect("zone")));
    assert!(i["launched_at"].as_str().is_some_and(|s| s.ends_with('Z')));
    let human = cli.ok(&["list"]);
    let table = String::from_utf8_lossy(&human.stdout);
    assert!(table.starts_with("BOX"), "{table}");
    assert!(
        table.contains(i["instance_id"].as_str().expect("id")),
        "{table}"
    );
}

#[test]
fn price_lists_each_type_and_zone_cheapest_first() {
    let cli = Cli::new();
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.0104)),
            ("t3a.micro", Some(0.0094)),
            ("t3a.micro/us-east-1b", Some(0.0031)),
        ],
        &[],
    );
    let prices = cli.json(&["price", "dev", "--json"]);
    let rows = prices.as_array().expect("array");
    assert_eq!(rows.len(), 4, "2 types × 2 zones: {prices}");
    assert_eq!(
        (
            &rows[0]["instance_type"],
            &rows[0]["zone"],
            &rows[0]["price"]
        ),
        (&json!("t3a.micro"), &json!("us-east-1b"), &json!(0.0031))
    );
    // With what the box's strategy weighs: rank, score (not asked: null),
    // the interruption record, and why.
    assert_eq!(rows[0]["rank"], 1, "{prices}");
    assert_eq!(rows[0]["score"], Value::Null);
    assert_eq!(rows[0]["interruptions"], 0);
    assert_eq!(rows[0]["under_ceiling"], true);
    assert_eq!(
        rows[0]["reason"], "the cheapest with good capacity (no history)",
        "{prices}"
    );
    let table = cli.ok(&["price", "dev"]);
    let text = String::from_utf8_lossy(&table.stdout);
    for column in ["RANK", "SCORE", "INTERRUPTED", "WHY"] {
        assert!(text.contains(column), "{text}");
    }
    let p: Vec<f64> = rows
        .iter()
        .map(|r| r["price"].as_f64().expect("price"))
        .collect();
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "sorted: {p:?}");

    let by_type = cli.json(&[
        "price",
        "--type",
        "t3.micro",
        "--zone",
        "us-east-1c",
        "--json",
    ]);
    assert_eq!(
        by_type,
        serde_json::json!([{"instance_type": "t3.micro", "zone": "us-east-1c", "price": 0.0104}])
    );
}

#[test]
fn up_launches_in_the_cheapest_zone_and_falls_back_when_capacity_is_refused() {
    let cli = Cli::new();
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.0104)),
            ("t3a.micro", Some(0.0094)),
            ("t3.micro/us-east-1b", Some(0.002)),
            ("t3a.micro/us-east-1a", Some(0.003)),
        ],
        &["t3.micro/us-east-1b"],
    );
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(
        (inst["instance_type"].as_str(), inst["zone"].as_str()),
        (Some("t3a.micro"), Some("us-east-1a")),
        "{inst}"
    );
    assert_eq!(cli.live().len(), 1);
}

#[test]
fn a_box_in_a_custom_vpc_launches_into_its_subnets_and_changes_zone_when_one_has_no_capacity() {
    let cli = Cli::new();
    let subnets = cli.moto.boto(
        "v = ec2.create_vpc(CidrBlock='10.9.0.0/16')['Vpc']['VpcId']\n\
         a = ec2.create_subnet(VpcId=v, CidrBlock='10.9.1.0/24', AvailabilityZone='us-east-1a')['Subnet']['SubnetId']\n\
         b = ec2.create_subnet(VpcId=v, CidrBlock='10.9.2.0/24', AvailabilityZone='us-east-1b')['Subnet']['SubnetId']\n\
         print(json.dumps([a, b]))",
    );
    let subnets: Vec<String> = serde_json::from_str(subnets.trim()).expect("json");
    cli.write_config(&CONFIG.replace(
        "zones = [\"us-east-1a\", \"us-east-1b\"]",
        &format!("subnets = [\"{}\", \"{}\"]", subnets[0], subnets[1]),
    ));
    // Zone a is the cheapest and has no capacity: the box goes to b's subnet.
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.0104)),
            ("t3a.micro", Some(0.0094)),
            ("t3a.micro/us-east-1a", Some(0.002)),
        ],
        &["t3a.micro/us-east-1a", "t3.micro/us-east-1a"],
    );
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(inst["zone"], "us-east-1b", "{inst}");
    let placed = cli.moto.boto(&format!(
        "i = ec2.describe_instances(InstanceIds=['{}'])['Reservations'][0]['Instances'][0]\nprint(i['SubnetId'])",
        inst["instance_id"].as_str().expect("id")
    ));
    assert_eq!(
        placed.trim(),
        subnets[1],
        "launched into the subnet of its zone"
    );
    assert_eq!(cli.live().len(), 1);
}

#[test]
fn a_ceiling_below_every_price_exits_1_lists_the_prices_and_creates_nothing() {
    let cli = Cli::with_config(&CONFIG.replace("max_price = 0.02", "max_price = 0.005"));
    cli.moto.set_market(
        &[("t3.micro", Some(0.0104)), ("t3a.micro", Some(0.0094))],
        &[],
    );
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no spot offering at or under the ceiling of 0.005"),
        "{err}"
    );
    assert!(
        err.contains("0.0094") && err.contains("0.0104"),
        "prices listed: {err}"
    );
    assert_eq!(cli.live().len(), 0, "nothing launched");
}

#[test]
fn stop_terminates_the_box_and_stop_again_exits_0() {
    let cli = Cli::new();
    let inst = cli.json(&["up", "dev", "--json"]);
    let out = cli.ok(&["stop", "dev", "--json"]);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(
        summary["terminated"],
        serde_json::json!([inst["instance_id"]])
    );
    assert!(stderr(&out).contains("done."), "{}", describe(&out));
    assert_eq!(cli.live().len(), 0);

    let again = cli.ok(&["stop", "dev"]);
    assert!(
        stderr(&again).contains("Nothing to stop"),
        "{}",
        describe(&again)
    );

    // And a later up launches a fresh instance.
    let next = cli.json(&["up", "dev", "--json"]);
    assert_ne!(next["instance_id"], inst["instance_id"]);
}

#[test]
fn stop_no_wait_returns_after_requesting_termination() {
    let cli = Cli::new();
    cli.ok(&["up", "dev"]);
    let out = cli.ok(&["stop", "dev", "--no-wait"]);
    assert!(stderr(&out).contains("not waiting"), "{}", describe(&out));
    assert_eq!(cli.live().len(), 0);
}

#[test]
fn two_simultaneous_ups_yield_one_instance() {
    let cli = Cli::new();
    let a = cli
        .command(&["up", "dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let b = cli
        .command(&["up", "dev"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let (a, b) = (
        a.wait_with_output().expect("a"),
        b.wait_with_output().expect("b"),
    );
    assert!(a.status.success(), "{}", describe(&a));
    assert!(b.status.success(), "{}", describe(&b));
    assert_eq!(cli.live().len(), 1);
}

#[test]
fn tcp_ready_check_waits_for_a_loopback_server() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cli = Cli::with_config(&CONFIG.replace(
        r#"ready = { check = "none" }"#,
        &format!(
            r#"ready = {{ check = "tcp", host = "127.0.0.1", port = {port}, timeout = "20s" }}"#
        ),
    ));
    let out = cli.ok(&["up", "dev"]);
    assert!(stderr(&out).contains("Server is up!"), "{}", describe(&out));
}

#[test]
fn a_failing_ready_check_exits_1_naming_the_probe() {
    let port = closed_port();
    let cli = Cli::with_config(&CONFIG.replace(
        r#"ready = { check = "none" }"#,
        &format!(
            r#"ready = {{ check = "tcp", host = "127.0.0.1", port = {port}, timeout = "1s" }}"#
        ),
    ));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        describe(&out)
    );
}

#[test]
fn command_ready_check_gets_the_instance_id() {
    let cli = Cli::new();
    let marker = cli.dir.path().join("ready-ran");
    cli.write_config(&CONFIG.replace(
        r#"ready = { check = "none" }"#,
        &format!(
            r#"ready = {{ check = "command", command = "echo {{id}} > {}" }}"#,
            marker.display()
        ),
    ));
    let inst = cli.json(&["up", "dev", "--json"]);
    let seen = std::fs::read_to_string(&marker).expect("the command ran");
    assert_eq!(seen.trim(), inst["instance_id"].as_str().expect("id"));
}

fn assert_config_error(cli: &Cli, config: &str, args: &[&str], line: usize, needle: &str) {
    cli.write_config(config);
    let out = cli.run(args);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = stderr(&out);
    let path = cli.config_path();
    let located = format!("{}:{line}:", path.display());
    assert!(err.contains(&located), "expected {located} in: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn bad_configs_exit_2_with_file_line_and_column_and_touch_nothing() {
    let cli = Cli::new();
    let up = ["up", "dev"];
    assert_config_error(
        &cli,
        &CONFIG.replace("max_price = 0.02", "max_price = 0.02\ncolour = \"red\""),
        &up,
        11,
        "unknown field `colour`",
    );
    assert_config_error(
        &cli,
        &CONFIG.replace("max_price = 0.02", "max_price = \"cheap\""),
        &up,
        10,
        "max_price",
    );
    assert_config_error(
        &cli,
        &CONFIG.replace("max_price = 0.02", "max_price = -0.5"),
        &up,
        10,
        "positive",
    );
    assert_config_error(
        &cli,
        &CONFIG.replace(r#"["t3.micro", "t3a.micro"]"#, "[]"),
        &up,
        9,
        "instance_types is empty",
    );
    assert_config_error(
        &cli,
        &CONFIG.replace("tags =", "user_data_file = \"missing.sh\"\ntags ="),
        &up,
        12,
        "missing.sh",
    );
    assert_config_error(&cli, "[box.dev\nimage = 1", &up, 1, "");
    // The same checks hold for stop and price.
    assert_config_error(
        &cli,
        &CONFIG.replace("max_price = 0.02", "max_price = -0.5"),
        &["stop", "dev"],
        10,
        "positive",
    );

    cli.write_config(CONFIG);
    let out = cli.run(&["up", "nosuchbox"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("no box named \"nosuchbox\"; the file defines: dev"),
        "{}",
        describe(&out)
    );
    assert_eq!(cli.live().len(), 0, "nothing was launched");
}

#[test]
fn a_missing_config_file_and_wrong_flags_exit_2() {
    let cli = Cli::new();
    std::fs::remove_file(cli.config_path()).expect("remove");
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(stderr(&out).contains("not found"), "{}", describe(&out));

    let out = Command::new(env!("CARGO_BIN_EXE_spotkeeper"))
        .args(["up", "--frobnicate"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = Command::new(env!("CARGO_BIN_EXE_spotkeeper"))
        .args(["price"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn an_unreachable_aws_gives_a_one_line_error_naming_the_call() {
    let cli = Cli::new();
    let mut cmd = cli.command(&["list"]);
    cmd.env(
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", closed_port()),
    );
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: DescribeInstances failed: no answer from AWS"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("testing"), "no credentials in errors: {err}");
}

#[test]
fn config_is_found_through_the_environment_variable() {
    let cli = Cli::new();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotkeeper"));
    cli.moto.configure(&mut cmd);
    let out = cmd
        .env("SPOTKEEPER_CONFIG", cli.config_path())
        .env("SPOTKEEPER_STATE", cli.dir.path().join("state.db"))
        .current_dir(Path::new("/"))
        .args(["price", "dev", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn a_ready_command_runs_without_aws_credentials_or_the_api_token_and_its_output_is_not_repeated() {
    // The test's environment has AWS credentials (the emulator's) and an API
    // token: the command succeeds only if it sees neither.
    let cli = Cli::with_config(&CONFIG.replace(
        "ready = { check = \"none\" }",
        "ready = { check = \"command\", command = \"test -z \\\"$AWS_SECRET_ACCESS_KEY$AWS_ACCESS_KEY_ID$SPOTKEEPER_API_TOKEN\\\"\", timeout = \"10s\" }",
    ));
    let out = cli
        .command(&["up", "dev"])
        .env("SPOTKEEPER_API_TOKEN", "a-secret-api-token-0123")
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));

    // A failing command: its status is said, what it printed is not.
    cli.ok(&["stop", "dev"]);
    cli.write_config(&CONFIG.replace(
        "ready = { check = \"none\" }",
        "ready = { check = \"command\", command = \"echo leaked-$((6*7))-secret >&2; exit 3\", timeout = \"1s\" }",
    ));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(text.contains("exit status: 3"), "{text}");
    assert!(!text.contains("leaked-42-secret"), "{text}");
    let events = format!("{:?}", cli.state_rows("SELECT kind, message FROM events"));
    assert!(events.contains("launch"), "the events were read: {events}");
    assert!(!events.contains("leaked-42-secret"), "{events}");
}

#[test]
fn serve_refuses_a_non_loopback_api_address_without_insecure_listen() {
    let cli = Cli::with_config(&CONFIG.replace(
        "[aws]",
        &format!(
            "[api]\nlisten = \"0.0.0.0:{}\"\ntoken = \"e2e-token-0123456789\"\n\n[aws]",
            closed_port()
        ),
    ));
    let out = cli.run(&["serve"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("not a loopback address")
            && stderr(&out).contains("--insecure-listen"),
        "{}",
        describe(&out)
    );
}

#[test]
fn security_groups_may_be_named_and_an_unknown_name_stops_up_before_any_launch() {
    let cli = Cli::new();
    let sg = cli.moto.boto(
        "v = ec2.describe_vpcs(Filters=[{'Name': 'is-default', 'Values': ['true']}])['Vpcs'][0]['VpcId']\n\
         print(ec2.create_security_group(GroupName='web-ssh', Description='d', VpcId=v)['GroupId'])",
    );
    let sg = sg.trim().to_owned();
    cli.write_config(&CONFIG.replace("tags =", "security_groups = [\"no-such-group\"]\ntags ="));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr(&out).contains("security group \"no-such-group\" not found in vpc-"),
        "{}",
        describe(&out)
    );
    assert!(cli.live().is_empty(), "nothing launched");
    // With a data volume too: the name is resolved before any volume is made.
    cli.write_config(&CONFIG.replace(
        "tags =",
        "security_groups = [\"no-such-group\"]\ndata_volume = { name = \"sg-data\", size_gb = 1 }\ntags =",
    ));
    let out = cli.run(&["up", "dev"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let volumes = cli.moto.boto(
        "print(len(ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['sg-data']}])['Volumes']))",
    );
    assert_eq!(
        volumes.trim(),
        "0",
        "no volume left for a launch that cannot happen"
    );

    cli.write_config(&CONFIG.replace("tags =", "security_groups = [\"web-ssh\"]\ntags ="));
    let inst = cli.json(&["up", "dev", "--json"]);
    let groups = cli.moto.boto(&format!(
        "r = ec2.describe_instances(InstanceIds=['{}'])['Reservations'][0]['Instances'][0]\nprint(json.dumps([g['GroupId'] for g in r['SecurityGroups']]))",
        inst["instance_id"].as_str().expect("id")
    ));
    assert_eq!(
        groups.trim(),
        format!("[\"{sg}\"]"),
        "launched in the named group"
    );
}

#[test]
fn price_shows_placement_scores_and_up_goes_where_capacity_is_good() {
    let cli = Cli::new();
    cli.moto.set_market_with(
        &[
            ("t3.micro", Some(0.0104)),
            ("t3a.micro", Some(0.0094)),
            ("t3a.micro/us-east-1a", Some(0.0031)),
        ],
        &[],
        &[("us-east-1a", 2), ("us-east-1b", 9)],
        false,
    );
    let prices = cli.json(&["price", "dev", "--json"]);
    let rows = prices.as_array().expect("array");
    // The cheapest offering is in a zone AWS scores 2 of 10: last.
    assert_eq!(
        (
            &rows[0]["instance_type"],
            &rows[0]["zone"],
            &rows[0]["score"]
        ),
        (&json!("t3a.micro"), &json!("us-east-1b"), &json!(9)),
        "{prices}"
    );
    let poor = rows
        .iter()
        .find(|r| r["zone"] == "us-east-1a" && r["instance_type"] == "t3a.micro")
        .expect("the cheapest row");
    assert_eq!(
        poor["rank"], 3,
        "after every offering of good capacity: {prices}"
    );
    assert!(
        poor["reason"]
            .as_str()
            .is_some_and(|r| r.contains("placement score 2 of 10")),
        "{poor}"
    );
    let up = cli.ok(&["up", "dev"]);
    let said = stderr(&up);
    assert!(
        said.contains("Chose t3a.micro in us-east-1b (strategy price-capacity)"),
        "{said}"
    );
    assert_eq!(cli.live()[0]["zone"], "us-east-1b");
}

#[test]
fn refused_placement_scores_leave_the_record_and_price_to_decide_and_are_said_once() {
    let cli = Cli::new();
    cli.moto.set_market_with(
        &[
            ("t3.micro", Some(0.0104)),
            ("t3a.micro", Some(0.0094)),
            ("t3a.micro/us-east-1a", Some(0.0031)),
        ],
        &[],
        &[],
        true,
    );
    let out = cli.ok(&["price", "dev", "--json"]);
    let said = stderr(&out);
    assert_eq!(
        said.matches("Spot placement scores are not available")
            .count(),
        1,
        "{said}"
    );
    assert!(said.contains("MaxConfigLimitExceeded"), "{said}");
    let rows: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(rows[0]["zone"], "us-east-1a", "the cheapest: {rows}");
    assert_eq!(rows[0]["score"], Value::Null);
    let up = cli.ok(&["up", "dev"]);
    assert!(stderr(&up).contains("us-east-1a"), "{}", stderr(&up));
}
