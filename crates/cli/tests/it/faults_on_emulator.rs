//! spotkeeper against an AWS that throttles, fails, loses answers and hangs:
//! every command and the daemon go through the testkit's fault-injecting
//! proxy in front of the emulator (which also honours client tokens as AWS
//! does). `up`, `list`, `stop` and a replacement survive throttling and
//! errors; lost answers never yield a second instance or volume; a hung
//! endpoint fails passes within the configured bound while `/healthz`
//! answers; SIGTERM stops `serve` within seconds whatever is in flight, and
//! the next daemon finishes the job. With AWS's eventual consistency played
//! by the proxy (a new instance or volume is not found by id and left out of
//! listings for a while), `up` twice, a replacement, a pool fill and a volume
//! move each end with exactly one of everything, and so do the scenarios
//! with throttling and lost answers.

use std::time::{Duration, Instant};

use crate::common::{Cli, Serve, describe, http_get, metric, passes, wait_passes};
use serde_json::Value;
use spotkeeper_testkit::Faults;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/fixtures/events");
const TOKEN: &str = "faults-token-0123456789";

/// How long the proxy hides a new instance or volume (AWS: usually seconds;
/// longer than every step between a launch and the next look at it here).
const LAG: Duration = Duration::from_secs(2);

/// `boxes` boxes dev0 … with a data volume each (deleted on stop), every
/// call through the proxy; `aws` and `extra` lines go into `[aws]` and each box.
fn config(cli_proxy: &str, api_port: u16, boxes: usize, aws: &str, extra: &str) -> String {
    let mut text = format!(
        "owner = \"faults\"\n\n[daemon]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"{TOKEN}\"\n\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{cli_proxy}\"\n{aws}\n"
    );
    for i in 0..boxes {
        text.push_str(&format!(
            "\n[box.dev{i}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\n\
             max_price = 0.02\nzones = [\"us-east-1a\", \"us-east-1b\"]\nready = {{ check = \"none\" }}\n\
             data_volume = {{ name = \"dev{i}-data\", size_gb = 5, on_stop = \"delete\" }}\n{extra}\n"
        ));
    }
    text
}

fn send(cli: &Cli, body: &str) {
    cli.moto.boto(&format!(
        "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-faults-events')['QueueUrl']\nsqs.send_message(QueueUrl=u, MessageBody={})",
        serde_json::to_string(body).expect("quoted")
    ));
}

fn warning(instance: &str, id: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/spot-interruption-warning.json"))
        .expect("fixture")
        .replace("i-1234567890abcdef0", instance)
        .replace("12345678-1234-1234-1234-123456789012", id)
}

/// Live instances and volumes of box `name`, straight from the emulator.
fn owned(cli: &Cli, name: &str) -> (usize, usize) {
    let out = cli.moto.boto(&format!(
        "r = ec2.describe_instances(Filters=[{{'Name': 'tag:spotkeeper:box', 'Values': ['{name}']}}])['Reservations']\n\
         i = [x for y in r for x in y['Instances'] if x['State']['Name'] in ('pending', 'running')]\n\
         v = ec2.describe_volumes(Filters=[{{'Name': 'tag:Name', 'Values': ['{name}-data']}}])['Volumes']\n\
         print(len(i), len(v))"
    ));
    let n: Vec<usize> = out
        .split_whitespace()
        .map(|x| x.parse().expect("count"))
        .collect();
    (n[0], n[1])
}

/// Runs a command until it succeeds, as a person would after an error
/// (at most `tries` times); returns the successful output.
fn retried(cli: &Cli, args: &[&str], tries: usize) -> std::process::Output {
    let mut last = None;
    for _ in 0..tries {
        let out = cli.run(args);
        if out.status.success() {
            return out;
        }
        last = Some(out);
    }
    panic!(
        "spotkeeper {args:?} failed {tries} times; last: {}",
        describe(&last.expect("ran"))
    );
}

fn stats(cli: &Cli) -> Value {
    serde_json::from_str(&cli.moto.proxy_stats()).expect("proxy stats are JSON")
}

#[test]
fn with_a_fifth_of_ec2_calls_throttled_and_some_failing_up_list_stop_and_a_replacement_succeed() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.write_config(&config(
        &cli.moto.proxy_endpoint(),
        api_port,
        1,
        "max_attempts = 8",
        "",
    ));
    cli.ok(&["setup"]);
    cli.moto.set_faults(&Faults {
        seed: 7,
        throttle: 0.2,
        fail: 0.05,
        lag: LAG,
        ..Faults::default()
    });
    let up: Value =
        serde_json::from_slice(&cli.ok(&["up", "dev0", "--json"]).stdout).expect("json");
    let old = up["instance_id"].as_str().expect("id").to_owned();
    assert_eq!(cli.live().len(), 1);

    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);
    send(&cli, &warning(&old, "throttled-1"));
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    spotkeeper_testkit::eventually(
        Duration::from_secs(90),
        Duration::from_millis(300),
        || {
            let live = cli.live();
            (live.len() == 1
                && live[0]["instance_id"] != old.as_str()
                && live[0]["state"] == "running")
                .then_some(())
        },
        || format!("not replaced: {:?}\n{}", cli.live(), serve.log()),
    );
    // Passes past the listing lag, which saw the replacement late, launched nothing.
    passes_past(api_port, &serve, Instant::now() + LAG, 2);
    assert_eq!(owned(&cli, "dev0"), (1, 1), "one instance, one volume");
    assert!(serve.stop().success());
    cli.ok(&["stop", "dev0"]);
    assert!(cli.live().is_empty());
    assert_eq!(owned(&cli, "dev0"), (0, 0), "stop left nothing");
    let s = stats(&cli);
    assert!(
        s["throttled"].as_u64() > Some(0) && s["failed"].as_u64() > Some(0),
        "faults were injected: {s}"
    );
}

#[test]
fn with_lost_answers_every_box_ends_with_one_instance_and_one_volume_and_stop_leaves_none() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.write_config(&config(&cli.moto.proxy_endpoint(), api_port, 3, "", ""));
    cli.ok(&["setup"]);
    cli.moto.set_faults(&Faults {
        seed: 11,
        lose: 0.15,
        lag: LAG,
        ..Faults::default()
    });
    for b in ["dev0", "dev1", "dev2"] {
        retried(&cli, &["up", b], 4);
    }
    for b in ["dev0", "dev1", "dev2"] {
        assert_eq!(owned(&cli, b), (1, 1), "{b}: one instance, one volume");
    }
    for b in ["dev0", "dev1", "dev2"] {
        retried(&cli, &["stop", b], 4);
        assert_eq!(owned(&cli, b), (0, 0), "{b}: stop left nothing");
    }
    let s = stats(&cli);
    assert!(s["lost"].as_u64() > Some(0), "answers were lost: {s}");
}

#[test]
fn a_hung_endpoint_fails_passes_within_the_bound_healthz_answers_and_sigterm_exits_at_once() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.write_config(&config(
        &cli.moto.proxy_endpoint(),
        api_port,
        1,
        "operation_timeout = \"3s\"\nattempt_timeout = \"1s\"\nmax_attempts = 2",
        "",
    ));
    cli.ok(&["setup"]);
    cli.ok(&["up", "dev0"]);
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);

    cli.moto.set_faults(&Faults {
        hang: true,
        ..Faults::default()
    });
    let hung_at = Instant::now();
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let health =
                http_get(api_port, "/healthz", None).expect("healthz answers while AWS hangs");
            // Healthy until a pass fails; the daemon says so just before it
            // counts the failed pass, so the two reads may see it in between.
            assert!(
                health.starts_with("HTTP/1.1 200") || health.contains("a reconcile pass failed"),
                "{health}"
            );
            (passes(api_port).1 > 0).then_some(())
        },
        || format!("no pass failed\n{}", serve.log()),
    );
    let failed_after = hung_at.elapsed();
    let health = healthz(api_port).expect("healthz answers");
    assert!(
        health.0.contains("503") && health.1.contains("a reconcile pass failed"),
        "degraded while AWS hangs: {health:?}"
    );
    let events = http_get(api_port, "/api/events", Some(TOKEN)).expect("events");
    assert!(
        events.contains("pass-failed") && events.contains("time limit"),
        "an event says the pass timed out: {events}"
    );
    assert!(s_stats_hung(&cli) > 0);

    // AWS answers again: a later pass succeeds, and the daemon is healthy.
    cli.moto.set_faults(&Faults::default());
    wait_passes(api_port, 1, &serve);
    let health = healthz(api_port).expect("healthz answers");
    assert!(health.0.contains("200"), "{health:?}");

    // Hung again, and SIGTERM while a call hangs.
    let hung = s_stats_hung(&cli);
    cli.moto.set_faults(&Faults {
        hang: true,
        ..Faults::default()
    });
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            if s_stats_hung(&cli) == hung {
                None
            } else {
                Some(())
            }
        },
        || format!("no call hangs\n{}", serve.log()),
    );
    let stopping = Instant::now();
    let status = serve.stop();
    let stop_took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        stop_took < Duration::from_secs(10),
        "serve took {stop_took:?} to stop"
    );
    println!("first pass failed {failed_after:?} after the hang; SIGTERM → exit in {stop_took:?}");
}

/// Waits for the daemon's passes until `until` (a fault's window, say) is
/// over, then for `n` more: what is asserted next was looked at after it.
fn passes_past(api_port: u16, serve: &Serve, until: Instant, n: u64) {
    while Instant::now() < until {
        wait_passes(api_port, 1, serve);
    }
    wait_passes(api_port, n, serve);
}

fn s_stats_hung(cli: &Cli) -> u64 {
    stats(cli)["hung"].as_u64().unwrap_or(0)
}

#[test]
fn sigterm_during_a_ready_check_exits_at_once_and_the_next_daemon_finishes_the_replacement() {
    let api_port = spotkeeper_testkit::closed_port();
    // The ready check dials a loopback port nobody listens on yet.
    let ready_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='f')");
    cli.write_config(
        &config(&cli.moto.proxy_endpoint(), api_port, 1, "", "")
            .replace(
                "ready = { check = \"none\" }",
                &format!(
                    "ready = {{ check = \"tcp\", host = \"127.0.0.1\", port = {ready_port}, timeout = \"30m\" }}\n\
                     dns = {{ zone = \"example.com\", name = \"dev.example.com\" }}"
                ),
            ),
    );
    cli.ok(&["setup"]);
    // The first instance comes up while the port answers.
    let listener = std::net::TcpListener::bind(("127.0.0.1", ready_port)).expect("bind");
    let first: Value =
        serde_json::from_slice(&cli.ok(&["up", "dev0", "--json"]).stdout).expect("json");
    drop(listener);
    let old = first["instance_id"].as_str().expect("id").to_owned();

    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);
    send(&cli, &warning(&old, "ready-1"));
    // The replacement is launched and waits for its ready check.
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            if !cli.live().iter().any(|i| i["instance_id"] != old.as_str()) {
                None
            } else {
                Some(())
            }
        },
        || format!("no replacement launched\n{}", serve.log()),
    );
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            serve
                .log()
                .contains("Waiting for server to come up")
                .then_some(())
        },
        || format!("no ready check began\n{}", serve.log()),
    );
    let stopping = Instant::now();
    let status = serve.stop();
    let stop_took = stopping.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(stop_took < Duration::from_secs(10), "took {stop_took:?}");

    // The next daemon, with the box answering: the replacement is settled
    // (DNS moves to it) and the warned instance retired.
    let _listener = std::net::TcpListener::bind(("127.0.0.1", ready_port)).expect("bind");
    let serve = Serve::start(&cli);
    let record = || {
        cli.moto.boto(
            "z = r53.list_hosted_zones()['HostedZones'][0]['Id']\n\
             a = [x['ResourceRecords'][0]['Value'] for x in r53.list_resource_record_sets(HostedZoneId=z)['ResourceRecordSets'] if x['Type'] == 'A']\n\
             print(a[0] if a else '')",
        )
    };
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let live = cli.live();
            (live.len() == 1
                && live[0]["instance_id"] != old.as_str()
                && live[0]["public_ip"].as_str() == Some(record().trim()))
            .then_some(())
        },
        || {
            format!(
                "not finished: {:?}, DNS {}\n{}",
                cli.live(),
                record(),
                serve.log()
            )
        },
    );
    assert_eq!(owned(&cli, "dev0"), (1, 1));
    assert!(serve.stop().success());
}

/// Live pool instances of `pool`, straight from the emulator.
fn pool_size(cli: &Cli, pool: &str) -> usize {
    cli.moto
        .boto(&format!(
            "r = ec2.describe_instances(Filters=[{{'Name': 'tag:spotkeeper:pool', 'Values': ['{pool}']}}, {{'Name': 'instance-state-name', 'Values': ['pending', 'running']}}])['Reservations']\n\
             print(sum(len(x['Instances']) for x in r))"
        ))
        .trim()
        .parse()
        .expect("count")
}

#[test]
fn with_aws_eventually_consistent_up_a_move_a_replacement_and_a_pool_fill_end_with_one_of_each() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    let mut text = config(&cli.moto.proxy_endpoint(), api_port, 1, "", "");
    text.push_str(
        "\n[box.mover]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n\
         zones = [\"us-east-1a\", \"us-east-1b\"]\nready = { check = \"none\" }\nmove_volume = true\n\
         data_volume = { name = \"mover-data\", size_gb = 5 }\n\
         \n[pool.workers]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ { type = \"t3.micro\", capacity = 1 } ]\n\
         zones = [\"us-east-1a\", \"us-east-1b\"]\nmin_capacity = 2\nmax_capacity = 4\n",
    );
    cli.write_config(&text);
    cli.ok(&["setup"]);
    cli.moto.set_faults(&Faults {
        lag: LAG,
        ..Faults::default()
    });

    // `up`, and `up` again while AWS does not list the new instance yet.
    let first: Value =
        serde_json::from_slice(&cli.ok(&["up", "dev0", "--json"]).stdout).expect("json");
    let again: Value =
        serde_json::from_slice(&cli.ok(&["up", "dev0", "--json"]).stdout).expect("json");
    assert_eq!(
        again["instance_id"], first["instance_id"],
        "the same instance"
    );
    assert_eq!(owned(&cli, "dev0"), (1, 1));

    // A volume move (cheaper in the other zone after a stop), and `up` again.
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.01)),
            ("t3.micro/us-east-1a", Some(0.002)),
        ],
        &[],
    );
    let placed: Value =
        serde_json::from_slice(&cli.ok(&["up", "mover", "--json"]).stdout).expect("json");
    assert_eq!(placed["zone"], "us-east-1a");
    cli.ok(&["stop", "mover"]);
    cli.moto.set_market(
        &[
            ("t3.micro", Some(0.01)),
            ("t3.micro/us-east-1b", Some(0.002)),
        ],
        &[],
    );
    let moved: Value =
        serde_json::from_slice(&cli.ok(&["up", "mover", "--json"]).stdout).expect("json");
    assert_eq!(moved["zone"], "us-east-1b", "moved with its volume");
    let still: Value =
        serde_json::from_slice(&cli.ok(&["up", "mover", "--json"]).stdout).expect("json");
    assert_eq!(still["instance_id"], moved["instance_id"]);
    assert_eq!(
        owned(&cli, "mover"),
        (1, 1),
        "one instance, one volume after the move"
    );
    // An image of the box, and a launch from it: only the box's own volume.
    let made: Value =
        serde_json::from_slice(&cli.ok(&["image", "create", "mover", "--json"]).stdout)
            .expect("json");
    cli.ok(&["stop", "mover"]);
    cli.write_config(&text.replace(
        "[box.mover]\nimage = \"ami-0123456789abcdef0\"",
        "[box.mover]\nimage = \"box:latest\"\nbase_image = \"ami-0123456789abcdef0\"",
    ));
    let from_image: Value =
        serde_json::from_slice(&cli.ok(&["up", "mover", "--json"]).stdout).expect("json");
    let devices = cli.moto.boto(&format!(
        "v = ec2.describe_volumes(Filters=[{{'Name': 'attachment.instance-id', 'Values': ['{}']}}])['Volumes']\n\
         print(json.dumps(sorted(a['Device'] for x in v for a in x['Attachments'])))",
        from_image["instance_id"].as_str().expect("id")
    ));
    let devices: Vec<String> = serde_json::from_str(devices.trim()).expect("json");
    assert_eq!(
        from_image["image_id"], made["image"]["id"],
        "from the box's image"
    );
    assert_eq!(
        devices,
        ["/dev/sda1", "/dev/sdf"],
        "its root disk and its data volume"
    );
    assert_eq!(owned(&cli, "mover"), (1, 1));

    // The daemon: a replacement of dev0, and the pool filled to its minimum,
    // with passes every second that do not list what was just launched.
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);
    let old = first["instance_id"].as_str().expect("id");
    send(&cli, &warning(old, "lagging-1"));
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            if owned(&cli, "dev0").0 != 1 || pool_size(&cli, "workers") < 2 {
                None
            } else {
                Some(())
            }
        },
        || {
            format!(
                "dev0 {:?}, pool {}\n{}",
                owned(&cli, "dev0"),
                pool_size(&cli, "workers"),
                serve.log()
            )
        },
    );
    // Several passes past the lag: still one of each.
    passes_past(api_port, &serve, Instant::now() + LAG, 3);
    assert_eq!(
        owned(&cli, "dev0"),
        (1, 1),
        "dev0: one instance, one volume"
    );
    assert_eq!(
        owned(&cli, "mover"),
        (1, 1),
        "mover: one instance, one volume"
    );
    assert_eq!(
        pool_size(&cli, "workers"),
        2,
        "the pool at its minimum, no more\n{}",
        serve.log()
    );
    assert!(serve.stop().success());
    assert!(
        stats(&cli)["hidden"].as_u64() > Some(0),
        "describes were answered NotFound"
    );
}

/// `GET /healthz`: (status line, body).
fn healthz(port: u16) -> Option<(String, String)> {
    let answer = http_get(port, "/healthz", None).ok()?;
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    Some((status, body))
}

#[test]
fn a_daemon_started_while_aws_hangs_serves_healthz_says_why_and_works_once_aws_answers() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.write_config(&config(
        &cli.moto.proxy_endpoint(),
        api_port,
        1,
        "operation_timeout = \"2s\"\nattempt_timeout = \"1s\"\nmax_attempts = 2",
        "",
    ));
    cli.ok(&["setup"]);
    // EC2 and SQS accept calls and answer none.
    cli.moto.set_faults(&Faults {
        hang: true,
        services: vec!["ec2", "sqs"],
        ..Faults::default()
    });
    let started = Instant::now();
    let serve = Serve::start(&cli);
    // The API answers at once, and says the daemon cannot work yet.
    let first = spotkeeper_testkit::eventually(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || healthz(api_port),
        || format!("no /healthz\n{}", serve.log()),
    );
    let answered_after = started.elapsed();
    assert!(first.0.contains("503"), "{first:?}");
    let degraded = spotkeeper_testkit::eventually(
        Duration::from_secs(20).saturating_sub(answered_after),
        Duration::from_millis(200),
        || Some(healthz(api_port).expect("healthz answers")).filter(|h| h.1.contains("degraded")),
        || format!("never degraded: {:?}\n{}", healthz(api_port), serve.log()),
    );
    assert!(degraded.0.contains("503"), "{degraded:?}");
    assert!(
        degraded.1.contains("the event queue cannot be read"),
        "{degraded:?}"
    );
    assert_eq!(metric(api_port, "spotkeeper_aws_reachable"), 0.0);
    // It keeps asking (a second unanswered call at least), recording one event.
    let hung = s_stats_hung(&cli);
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            if s_stats_hung(&cli) < hung + 2 {
                None
            } else {
                Some(())
            }
        },
        || format!("it stopped asking\n{}", serve.log()),
    );
    let events = http_get(api_port, "/api/events", Some(TOKEN)).expect("events");
    assert_eq!(events.matches("aws-unreachable").count(), 1, "{events}");

    // AWS answers: the daemon gets to work and says it is healthy.
    cli.moto.set_faults(&Faults::default());
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let h = healthz(api_port).expect("healthz answers");
            (h.0.contains("200") && h.1.contains("\"ok\"")).then_some(())
        },
        || format!("never ok: {:?}\n{}", healthz(api_port), serve.log()),
    );
    assert_eq!(metric(api_port, "spotkeeper_aws_reachable"), 1.0);
    let events = http_get(api_port, "/api/events", Some(TOKEN)).expect("events");
    assert!(events.contains("aws-reachable"), "{events}");
    assert!(serve.stop().success());
    println!("/healthz answered {answered_after:?} after the start, while AWS hung");
}

#[test]
fn a_daemon_stopped_while_it_waits_for_aws_exits_at_once() {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::new();
    cli.write_config(&config(
        &cli.moto.proxy_endpoint(),
        api_port,
        1,
        "operation_timeout = \"2s\"\nattempt_timeout = \"1s\"\nmax_attempts = 2",
        "",
    ));
    cli.ok(&["setup"]);
    cli.moto.set_faults(&Faults {
        hang: true,
        services: vec!["ec2", "sqs"],
        ..Faults::default()
    });
    let serve = Serve::start(&cli);
    spotkeeper_testkit::eventually(
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            if healthz(api_port).is_none_or(|h| !h.1.contains("degraded")) {
                None
            } else {
                Some(())
            }
        },
        || format!("never degraded\n{}", serve.log()),
    );
    let stopping = Instant::now();
    assert!(serve.stop().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
}
