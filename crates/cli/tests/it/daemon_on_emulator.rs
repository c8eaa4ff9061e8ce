//! `spotkeeper serve` against the emulator with the real event JSON: an
//! interrupted box is replaced (volume and DNS follow), duplicates, garbage
//! and other people's instances change nothing, rebalance recommendations
//! follow the box's policy, and SIGTERM stops it cleanly.

use crate::common;
use std::time::{Duration, Instant};

use crate::common::{CONFIG, Cli, Serve, describe, wait_passes};
use serde_json::Value;
use spotkeeper_testkit::eventually;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/fixtures/events");

fn config(interval: &str, api_port: u16) -> String {
    CONFIG.replace(
        "[aws]",
        &format!("[daemon]\ninterval = \"{interval}\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"e2e-token-0123456789\"\n\n[aws]"),
    )
    .replace(
        "tags =",
        "data_volume = { name = \"dev-data\", size_gb = 5 }\ndns = { zone = \"example.com\", name = \"dev.example.com\" }\ntags =",
    )
}

fn event(name: &str, instance: &str, id: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{name}"))
        .expect("fixture")
        .replace("i-1234567890abcdef0", instance)
        .replace("12345678-1234-1234-1234-123456789012", id)
        .replace("22345678-1234-1234-1234-123456789012", id)
        .replace("7bf73129-1428-4cd3-a780-95db273d1602", id)
}

fn send(cli: &Cli, body: &str) {
    cli.moto.boto(&format!(
        "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-clitest-events')['QueueUrl']\nsqs.send_message(QueueUrl=u, MessageBody={})",
        serde_json::to_string(body).expect("quoted")
    ));
}

fn queue_depth(cli: &Cli) -> i64 {
    let out = cli.moto.boto(
        "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-clitest-events')['QueueUrl']\n\
         a = sqs.get_queue_attributes(QueueUrl=u, AttributeNames=['ApproximateNumberOfMessages', 'ApproximateNumberOfMessagesNotVisible'])['Attributes']\n\
         print(int(a['ApproximateNumberOfMessages']) + int(a['ApproximateNumberOfMessagesNotVisible']))",
    );
    out.trim().parse().expect("a number")
}

fn box_instances(cli: &Cli) -> usize {
    let out = cli.moto.boto(
        "r = ec2.describe_instances(Filters=[{'Name': 'tag:spotkeeper:box', 'Values': ['dev']}])['Reservations']\nprint(sum(len(x['Instances']) for x in r))",
    );
    out.trim().parse().expect("a number")
}

/// Polls `list --json` until the box runs on an instance other than `old`.
fn wait_replaced(cli: &Cli, old: &Value, serve: &Serve) -> Value {
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let live = cli.live();
            (live.len() == 1 && live[0]["instance_id"] != *old && live[0]["state"] == "running")
                .then(|| live[0].clone())
        },
        || {
            format!(
                "no replacement within 60s; live: {:?}\n{}",
                cli.live(),
                serve.log()
            )
        },
    )
}

pub(crate) fn record(cli: &Cli) -> String {
    cli.moto
        .boto(
            "z = r53.list_hosted_zones()['HostedZones'][0]['Id']\n\
             a = [x['ResourceRecords'][0]['Value'] for x in r53.list_resource_record_sets(HostedZoneId=z)['ResourceRecordSets'] if x['Type'] == 'A']\n\
             print(a[0] if a else '')",
        )
        .trim()
        .to_owned()
}

/// A CLI on `config` with the DNS zone, `setup` done and box `dev` up;
/// its instance id.
fn dev_up(config: &str) -> (Cli, String) {
    let cli = Cli::with_config(config);
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='d')");
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    (cli, old)
}

#[test]
fn a_spot_warning_gets_the_box_replaced_with_its_volume_and_name_and_noise_changes_nothing() {
    let api_port = spotkeeper_testkit::closed_port();
    let (cli, old) = dev_up(&config("2s", api_port));
    let serve = Serve::start(&cli);

    // The two-minute warning, then AWS takes the instance.
    send(
        &cli,
        &event("spot-interruption-warning.json", &old, "warn-1"),
    );
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    let new = wait_replaced(&cli, &serde_json::Value::from(old.as_str()), &serve);
    assert_ne!(new["instance_id"], old.as_str());
    // The volume follows once the new instance runs (and the old is gone).
    let attached = || {
        let vol = cli.moto.boto(
            "v = ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\nprint(json.dumps([x['Attachments'][0]['InstanceId'] if x['Attachments'] else None for x in v]))",
        );
        serde_json::from_str::<Value>(vol.trim()).expect("json")
    };
    spotkeeper_testkit::eventually(
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            if attached() != serde_json::json!([new["instance_id"]]) {
                None
            } else {
                Some(())
            }
        },
        || {
            format!(
                "the one volume did not move over: {}\n{}",
                attached(),
                serve.log()
            )
        },
    );
    spotkeeper_testkit::eventually(
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            if record(&cli) != new["public_ip"].as_str().unwrap_or_default() {
                None
            } else {
                Some(())
            }
        },
        || format!("DNS did not follow: {}\n{}", record(&cli), serve.log()),
    );

    // The same warning again, garbage, and someone else's instance: nothing happens.
    send(
        &cli,
        &event("spot-interruption-warning.json", &old, "warn-1"),
    );
    send(&cli, "this is not json");
    send(
        &cli,
        r#"{"id": "x", "source": "aws.s3", "detail-type": "Object Created", "detail": {}}"#,
    );
    send(
        &cli,
        &event(
            "spot-interruption-warning.json",
            "i-0fedcba9876543210",
            "warn-2",
        ),
    );
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            if queue_depth(&cli) > 0 {
                None
            } else {
                Some(())
            }
        },
        || format!("messages were not deleted\n{}", serve.log()),
    );
    wait_passes(api_port, 2, &serve);
    assert_eq!(box_instances(&cli), 2, "no extra launch\n{}", serve.log());
    assert_eq!(cli.live().len(), 1);

    // The API answers on loopback, with the token.
    let get = |path: &str, token: Option<&str>| -> String {
        common::http_get(api_port, path, token).expect("API listening")
    };
    assert!(get("/healthz", None).starts_with("HTTP/1.1 200"));
    assert!(get("/api/boxes", None).starts_with("HTTP/1.1 401"));
    let boxes = get("/api/boxes", Some("e2e-token-0123456789"));
    assert!(
        boxes.starts_with("HTTP/1.1 200")
            && boxes.contains(new["instance_id"].as_str().expect("id")),
        "{boxes}"
    );

    let status = serve.stop();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

#[test]
fn a_state_change_event_alone_wakes_the_daemon_and_stop_is_respected() {
    // An hour between passes: only the event can cause the replacement.
    let api_port = spotkeeper_testkit::closed_port();
    let (cli, old) = dev_up(&config("1h", api_port));
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve); // the start-up pass finds the box healthy
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    send(
        &cli,
        &event("state-change-terminated.json", &old, "state-1"),
    );
    let new = wait_replaced(&cli, &serde_json::Value::from(old.as_str()), &serve);

    // `stop` deregisters the box: the daemon must not bring it back.
    let out = cli.run(&["stop", "dev"]);
    assert!(out.status.success(), "{}", describe(&out));
    send(
        &cli,
        &event(
            "state-change-terminated.json",
            new["instance_id"].as_str().expect("id"),
            "state-2",
        ),
    );
    // Handled (deleted) without a launch: the box is no longer managed.
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            if queue_depth(&cli) > 0 {
                None
            } else {
                Some(())
            }
        },
        || format!("not handled\n{}", serve.log()),
    );
    assert!(serve.log().contains("NotOurs"), "{}", serve.log());
    assert!(serve.stop().success());
    // Nor does a pass bring it back: a new daemon's start-up pass looks.
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);
    assert!(
        cli.live().is_empty(),
        "a stopped box stays stopped\n{}",
        serve.log()
    );
    assert!(serve.stop().success());
}

#[test]
fn killing_the_daemon_at_any_moment_never_yields_a_second_instance_or_a_leaked_volume() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config("1s", api_port));
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='k')");
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    send(
        &cli,
        &event("spot-interruption-warning.json", &old, "crash-1"),
    );
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));

    // SIGKILL at several moments of the replacement, restarting each time.
    for delay in [0u64, 150, 300, 600, 900, 1500] {
        let mut serve = Serve::start(&cli);
        std::thread::sleep(Duration::from_millis(delay));
        let _ = serve.child.kill();
        let _ = serve.child.wait();
    }
    let serve = Serve::start(&cli);
    let new = wait_replaced(&cli, &serde_json::Value::from(old.as_str()), &serve);
    // Let a few passes heal whatever a kill interrupted.
    let holders = || -> Value {
        let vols = cli.moto.boto(
            "v = ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\nprint(json.dumps([x['Attachments'][0]['InstanceId'] if x['Attachments'] else None for x in v]))",
        );
        serde_json::from_str(vols.trim()).expect("json")
    };
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            (holders() == serde_json::json!([new["instance_id"]])
                && record(&cli) == new["public_ip"].as_str().unwrap_or_default())
            .then_some(())
        },
        || {
            format!(
                "not healed: volumes {}, DNS {}\n{}",
                holders(),
                record(&cli),
                serve.log()
            )
        },
    );
    wait_passes(api_port, 2, &serve);
    let live = cli.live();
    assert_eq!(
        live.len(),
        1,
        "exactly one live instance: {live:?}\n{}",
        serve.log()
    );
    assert_eq!(live[0]["instance_id"], new["instance_id"]);
    let open = cli.moto.boto(
        "r = ec2.describe_spot_instance_requests()['SpotInstanceRequests']\nprint(len([x for x in r if x['State'] == 'open']))",
    );
    assert_eq!(open.trim(), "0", "no leaked spot requests");
    assert!(serve.stop().success());
}

/// Sends a rebalance recommendation for the box's instance to a daemon
/// running with `policy`; returns (old instance, what `list` shows after).
fn rebalance_with(policy: &str) -> (String, Vec<Value>, Serve, Cli) {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(
        &config("1s", api_port).replace("tags =", &format!("on_rebalance = \"{policy}\"\ntags =")),
    );
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='d')");
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve); // the start-up pass finds the box healthy
    send(
        &cli,
        &event(
            "rebalance-recommendation.json",
            &old,
            &format!("rebal-{policy}"),
        ),
    );
    let live = if policy == "replace" {
        let new = wait_replaced(&cli, &serde_json::Value::from(old.as_str()), &serve);
        vec![new]
    } else {
        // The daemon reads and acts on the message.
        spotkeeper_testkit::eventually(
            Duration::from_secs(30),
            Duration::from_millis(300),
            || (queue_depth(&cli) == 0).then_some(()),
            || format!("the message was not handled\n{}", serve.log()),
        );
        // Handled; two passes later nothing was launched either.
        wait_passes(api_port, 2, &serve);
        cli.live()
    };
    (old, live, serve, cli)
}

#[test]
fn a_rebalance_recommendation_is_ignored_by_default() {
    let (old, live, serve, cli) = rebalance_with("ignore");
    assert_eq!(live.len(), 1, "{live:?}\n{}", serve.log());
    assert_eq!(live[0]["instance_id"], old.as_str());
    assert_eq!(box_instances(&cli), 1, "nothing launched");
    assert_eq!(queue_depth(&cli), 0, "the message was deleted");
    assert!(serve.stop().success());
}

#[test]
fn a_rebalance_recommendation_with_replace_starts_the_new_box_and_retires_the_old() {
    let (old, live, serve, cli) = rebalance_with("replace");
    assert_eq!(live.len(), 1, "exactly one live instance: {live:?}");
    assert_ne!(live[0]["instance_id"], old.as_str());
    // The old one was still running when the new one came: it is retired now.
    let state = cli.moto.boto(&format!(
        "print(ec2.describe_instances(InstanceIds=['{old}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
    ));
    assert!(
        ["shutting-down", "terminated"].contains(&state.trim()),
        "{state}\n{}",
        serve.log()
    );
    // Its DNS name follows the new instance.
    spotkeeper_testkit::eventually(
        Duration::from_secs(20),
        Duration::from_millis(300),
        || {
            if record(&cli) != live[0]["public_ip"].as_str().unwrap_or_default() {
                None
            } else {
                Some(())
            }
        },
        || format!("DNS did not follow\n{}", serve.log()),
    );
    assert!(serve.stop().success());
}

#[test]
fn notifications_survive_a_kill_and_a_receiver_that_never_answers_does_not_delay_a_replacement() {
    use spotkeeper_engine::notify::{EVENT_HEADER, SIGNATURE_HEADER, signature};
    use spotkeeper_testkit::{Answer, Receiver};
    const SECRET: &str = "e2e-hook-secret-0123456789";
    let api_port = spotkeeper_testkit::closed_port();
    let hook = Receiver::start(Answer::Fail, 0);
    let stuck = Receiver::start(Answer::Hang, 0);
    let cli = Cli::with_config(&format!(
        "{}\n[[notify]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nevents = [\"launch\", \"replaced\"]\n\n\
         [[notify]]\nname = \"stuck\"\nkind = \"slack\"\nurl = \"{}\"\nevents = [\"*\"]\n",
        config("1s", api_port),
        hook.url("/hook"),
        stuck.url("/services/T0/B0/slack-secret-path"),
    ));
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='n')");
    cli.ok(&["setup"]);
    let mut serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);

    // `up` records a launch; the receiver fails; the daemon is killed before it got through.
    let first = cli.json(&["up", "dev", "--json"]);
    let failed = hook.wait_for(Duration::from_secs(20), "a failed attempt", |g| {
        !g.is_empty()
    });
    let launch = failed[0].headers[EVENT_HEADER].clone();
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    hook.set_answer(Answer::Ok);

    let serve = Serve::start(&cli);
    let got = hook.wait_for(
        Duration::from_secs(20),
        "the launch after the restart",
        |g| {
            g.iter()
                .any(|r| r.status == 200 && r.headers[EVENT_HEADER] == launch)
        },
    );
    let taken = got.iter().find(|r| r.status == 200).expect("delivered");
    assert_eq!(
        taken.headers[SIGNATURE_HEADER],
        signature(SECRET, taken.body.as_bytes())
    );
    let body: Value = serde_json::from_str(&taken.body).expect("json");
    assert_eq!(
        (body["kind"].as_str(), body["box"].as_str()),
        (Some("launch"), Some("dev"))
    );

    // The Slack sink holds its request open; a replacement does not wait for it.
    stuck.wait_for(
        Duration::from_secs(20),
        "a request to the hanging sink",
        |g| !g.is_empty(),
    );
    let old = first["instance_id"].as_str().expect("id").to_owned();
    let warned = Instant::now();
    send(
        &cli,
        &event("spot-interruption-warning.json", &old, "notify-1"),
    );
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    wait_replaced(&cli, &serde_json::Value::from(old.as_str()), &serve);
    eprintln!(
        "replacement running {:.1} s after the warning while a sink hangs",
        warned.elapsed().as_secs_f64()
    );
    assert_eq!(
        stuck.got().iter().filter(|r| r.status != 0).count(),
        0,
        "it never answered"
    );
    hook.wait_for(Duration::from_secs(20), "the replaced event", |g| {
        g.iter()
            .any(|r| r.status == 200 && r.body.contains("\"kind\":\"replaced\""))
    });
    let log = serve.log();
    assert!(
        !log.contains("slack-secret-path") && !log.contains(SECRET),
        "no sink secret in the log:\n{log}"
    );
    assert!(serve.stop().success());
}

#[test]
fn cost_integrates_the_recorded_spot_prices_and_counts_interruptions_per_offering() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&format!(
        "{}\n[cost]\non_demand = {{ \"t3.micro\" = 0.0104, \"t3a.micro\" = 0.0094 }}\n",
        config("1s", api_port)
    ));
    cli.moto.set_market(
        &[("t3.micro", Some(0.0031)), ("t3a.micro", Some(0.005))],
        &[],
    );
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='c')");
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let serve = Serve::start(&cli);
    wait_passes(api_port, 2, &serve);
    // One interruption: the box moves to the other zone (same price there).
    let old = first["instance_id"].as_str().expect("id").to_owned();
    send(
        &cli,
        &event("spot-interruption-warning.json", &old, "cost-1"),
    );
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    wait_replaced(&cli, &serde_json::Value::from(old.as_str()), &serve);
    wait_passes(api_port, 3, &serve);
    let api = common::http_get(api_port, "/api/cost?since=1d", Some("e2e-token-0123456789"))
        .expect("API");
    assert!(
        api.starts_with("HTTP/1.1 200") && api.contains("\"box dev\""),
        "{api}"
    );
    let bad = common::http_get(
        api_port,
        "/api/cost?since=forever",
        Some("e2e-token-0123456789"),
    )
    .expect("API");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    // A scrape starts the computation and answers with the last figures.
    let scrape = || common::http_get(api_port, "/metrics", None).expect("metrics");
    let gauge: f64 = eventually(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            scrape()
                .lines()
                .find_map(|l| l.strip_prefix("spotkeeper_box_savings_dollars{box=\"dev\"} "))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v > 0.0)
        },
        || format!("no savings gauge:\n{}", scrape()),
    );
    assert!(serve.stop().success());

    // By hand, from what the state recorded: each run from AWS's launch time
    // to when it was first seen going away (else last seen), at its type's
    // price (the volume keeps the box in its zone: the replacement runs
    // t3a.micro there, t3.micro being marked interrupted).
    let runs: Vec<(String, String, i64, i64, String)> = cli
        .state_rows(
            "SELECT instance_id, zone, launched_at, COALESCE(ended_at, last_seen), instance_type \
             FROM instances_seen WHERE box = 'dev'",
        )
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].parse::<i64>().expect("a number");
            (r[0].clone(), r[1].clone(), n(2), n(3), r[4].clone())
        })
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let price = |t: &str| match t {
        "t3.micro" => (0.0031, 0.0104),
        _ => (0.005, 0.0094),
    };
    let hours: f64 = runs.iter().map(|r| (r.3 - r.2) as f64 / 3600.0).sum();
    let spot: f64 = runs
        .iter()
        .map(|r| (r.3 - r.2) as f64 / 3600.0 * price(&r.4).0)
        .sum();
    let on_demand: f64 = runs
        .iter()
        .map(|r| (r.3 - r.2) as f64 / 3600.0 * price(&r.4).1)
        .sum();
    assert!(hours > 0.0);
    let report = cli.json(&["cost", "--since", "1d", "--json"]);
    let dev = &report["lines"][0];
    assert_eq!(dev["subject"], "box dev");
    let close = |v: &Value, want: f64| (v.as_f64().expect("number") - want).abs() < 1e-12;
    assert!(close(&dev["spot_hours"], hours), "{report}");
    assert!(close(&dev["cost"], spot), "{report}");
    assert!(close(&dev["on_demand_cost"], on_demand), "{report}");
    assert!(close(&dev["savings"], on_demand - spot), "{report}");
    // The gauge was the same report a little earlier: fewer hours, less saved.
    assert!(
        gauge > 0.0 && gauge <= on_demand - spot + 1e-12,
        "gauge {gauge}, saved {}",
        on_demand - spot
    );
    let percent = 100.0 * (on_demand - spot) / on_demand;
    assert!(
        (dev["savings_percent"].as_f64().expect("%") - percent).abs() < 1e-9,
        "{report}"
    );
    let old_run = runs.iter().find(|r| r.0 == old).expect("the old run");
    let interrupted: Vec<&Value> = report["offerings"]
        .as_array()
        .expect("offerings")
        .iter()
        .filter(|o| o["interruptions"] == 1)
        .collect();
    assert_eq!(interrupted.len(), 1, "{report}");
    assert_eq!(interrupted[0]["zone"], old_run.1.as_str());
    assert!(close(
        &interrupted[0]["hours_between"],
        (old_run.3 - old_run.2) as f64 / 3600.0
    ));

    // Availability beside savings: the warning to the replacement being up.
    assert_eq!(dev["interruptions"], 1, "{report}");
    let down = dev["down_seconds"].as_i64().expect("seconds");
    assert!((0..60).contains(&down), "{report}");
    assert_eq!(dev["last_recovery_seconds"].as_i64(), Some(down));

    let table = cli.ok(&["cost", "--since", "1d"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("box dev") && text.contains(&format!("{percent:.1}%")),
        "{text}"
    );
    assert!(
        text.contains("down 1 min over 1 interruption")
            || text.contains("down 0 min over 1 interruption"),
        "{text}"
    );
}

#[test]
fn a_box_whose_spot_price_rises_over_the_ceiling_is_moved_under_it_and_the_old_one_retired() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config("1s", api_port));
    cli.moto.set_market(
        &[("t3.micro", Some(0.004)), ("t3a.micro", Some(0.006))],
        &[],
    );
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='p')");
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    assert_eq!(first["instance_type"], "t3.micro");
    let serve = Serve::start(&cli);
    wait_passes(api_port, 2, &serve);
    assert_eq!(cli.live().len(), 1, "under the ceiling: nothing moves");

    // t3.micro goes to 0.05, over the 0.02 ceiling; t3a.micro stays under it
    // in the volume's zone: the box moves there, the old instance goes.
    cli.moto
        .set_market(&[("t3.micro", Some(0.05)), ("t3a.micro", Some(0.006))], &[]);
    let new = wait_replaced(&cli, &first["instance_id"], &serve);
    assert_eq!(new["instance_type"], "t3a.micro", "{new}");
    assert_eq!(new["zone"], first["zone"], "the volume keeps the zone");
    let old = first["instance_id"].as_str().expect("id");
    let state = || {
        cli.moto
            .boto(&format!(
                "print(ec2.describe_instances(InstanceIds=['{old}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
            ))
            .trim()
            .to_owned()
    };
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(300),
        || matches!(state().as_str(), "shutting-down" | "terminated").then_some(()),
        || {
            format!(
                "the over-ceiling instance was not retired ({})\n{}",
                state(),
                serve.log()
            )
        },
    );
    let events = common::http_get(
        api_port,
        "/api/events?box=dev",
        Some("e2e-token-0123456789"),
    )
    .expect("API");
    assert!(
        events.contains("over-ceiling") && events.contains("0.05"),
        "{events}"
    );
    assert!(serve.stop().success());
}

/// The state of instance `id` as the emulator says.
fn instance_state(cli: &Cli, id: &str) -> String {
    cli.moto
        .boto(&format!(
            "print(ec2.describe_instances(InstanceIds=['{id}'])['Reservations'][0]['Instances'][0]['State']['Name'])"
        ))
        .trim()
        .to_owned()
}

/// The body of an API answer, as JSON.
fn body(answer: &str) -> Value {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

#[test]
fn a_stop_through_the_api_answers_at_once_takes_the_name_first_and_a_killed_daemons_job_is_finished()
 {
    const TOKEN: &str = "e2e-token-0123456789";
    let api_port = spotkeeper_testkit::closed_port();
    let (cli, old) = dev_up(
        &config("1s", api_port).replace("size_gb = 5 }", "size_gb = 5, on_stop = \"snapshot\" }"),
    );
    assert!(!record(&cli).is_empty(), "up set the DNS record");
    // AWS takes from seconds to minutes to terminate an instance; the
    // emulator now does too (the instance stays shutting-down, its volume
    // attached, its address its own).
    cli.moto.set_terminating_for(Duration::from_secs(45));
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);

    let asked = Instant::now();
    let answer = common::http(api_port, "DELETE", "/api/boxes/dev?stop=true", Some(TOKEN))
        .expect("the API answers");
    println!("DELETE ?stop=true answered in {:?}", asked.elapsed());
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("location: /api/boxes/dev"),
        "{answer}"
    );
    assert_eq!(body(&answer)["stop"]["state"], "pending", "{answer}");
    // Asking again is the same stop.
    let again = common::http(api_port, "DELETE", "/api/boxes/dev?stop=true", Some(TOKEN))
        .expect("the API answers");
    assert!(again.starts_with("HTTP/1.1 202"), "{again}");
    assert_eq!(
        body(&again)["stop"]["requested_at"],
        body(&answer)["stop"]["requested_at"]
    );

    // The name goes while the instance is still shutting down: a record
    // left on a released public address can be taken over.
    spotkeeper_testkit::eventually(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            if !record(&cli).is_empty() {
                None
            } else {
                Some(())
            }
        },
        || format!("the DNS record stayed\n{}", serve.log()),
    );
    assert_eq!(
        instance_state(&cli, &old),
        "shutting-down",
        "the name went before the instance did"
    );
    let view =
        body(&common::http_get(api_port, "/api/boxes/dev", Some(TOKEN)).expect("the API answers"));
    let steps = |view: &Value| -> Vec<String> {
        view["stop"]["steps"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|s| s["step"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(view["stop"]["state"], "stopping", "{view}");
    assert_eq!(steps(&view), ["terminating", "dns"], "{view}");

    // The daemon dies mid-job (the volume waits for the instance to go);
    // the next one finishes it.
    let mut serve = serve;
    let _ = serve.child.kill();
    let _ = serve.child.wait();
    assert_eq!(instance_state(&cli, &old), "shutting-down");
    let serve = Serve::start(&cli);
    let read = || {
        body(
            &common::http_get(api_port, "/api/boxes/dev", Some(TOKEN))
                .unwrap_or_else(|_| "HTTP/1.1 000\r\n\r\n{}".into()),
        )
    };
    let view = eventually(
        Duration::from_secs(90),
        Duration::from_millis(300),
        || Some(read()).filter(|v| v["stop"]["state"] == "done"),
        || format!("the stop was not finished: {}\n{}", read(), serve.log()),
    );
    assert_eq!(view["managed"], false, "{view}");
    assert_eq!(
        steps(&view),
        ["terminating", "dns", "terminated", "volumes", "done"],
        "{view}"
    );
    assert_eq!(instance_state(&cli, &old), "terminated");
    let left = cli.moto.boto(
        "v = ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\n\
         s = ec2.describe_snapshots(Filters=[{'Name': 'tag:spotkeeper:purpose', 'Values': ['stop']}])['Snapshots']\n\
         print(len(v), len(s))",
    );
    assert_eq!(
        left.trim(),
        "0 1",
        "the volume saved as a snapshot, then deleted"
    );
    // Stopped stays stopped, and the name is free again.
    wait_passes(api_port, 2, &serve);
    assert!(cli.live().is_empty(), "{}", serve.log());
    assert!(record(&cli).is_empty());
    assert!(serve.stop().success());
}

/// Route 53 calls that reached the emulator through the proxy.
fn route53_calls(cli: &Cli) -> usize {
    let stats: Value = serde_json::from_str(&cli.moto.proxy_stats()).expect("proxy stats");
    stats["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c[1] == "route53")
        .count()
}

/// The API shows a box's DNS record as the daemon left it when it settled
/// the box: the dashboard's refreshes ask Route 53 nothing (its API allows
/// five requests a second per account, which the daemon's moves need).
#[test]
fn the_api_shows_the_dns_record_as_the_daemon_left_it_without_asking_route53() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.write_config(&config("1s", api_port).replace(
        "region = \"us-east-1\"",
        &format!(
            "region = \"us-east-1\"\nendpoint_url = \"{}\"",
            cli.moto.proxy_endpoint()
        ),
    ));
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='r')");
    cli.ok(&["setup"]);
    let up = cli.json(&["up", "dev", "--json"]);
    let id = up["instance_id"].as_str().expect("id").to_owned();
    let serve = Serve::start(&cli);
    // Settled by the daemon (its settle reads the record once).
    wait_passes(api_port, 4, &serve);
    let before = route53_calls(&cli);
    assert!(before > 0, "the daemon looked at the record");
    for _ in 0..3 {
        let answer =
            common::http_get(api_port, "/api/boxes", Some("e2e-token-0123456789")).expect("API");
        let body: Value =
            serde_json::from_str(answer.split_once("\r\n\r\n").expect("body").1).expect("json");
        assert_eq!(body[0]["instance_id"], id.as_str(), "{body}");
        assert_eq!(body[0]["dns"]["matches"], true, "{body}");
        assert_eq!(body[0]["dns"]["owned"], true, "{body}");
    }
    assert_eq!(route53_calls(&cli), before, "the API asked Route 53");
    assert!(serve.stop().success());
}
