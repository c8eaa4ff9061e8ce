//! A worker pool scaled by `spotkeeper serve` against the emulator, from a
//! demand server this test runs on loopback: pending 3 → 5 → 12 → 0 scales
//! within max and back to min after the (shortened) idle period; capacity
//! weights count; a type over its max_price is left out; the demand server
//! answering 500 or garbage holds the pool.

use crate::common;
use spotkeeper_testkit::eventually;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{Cli, Demand, Serve, demand_server, describe};
use serde_json::Value;

fn config(demand_port: u16, api_port: u16) -> String {
    format!(
        r#"
owner = "pooltest"

[daemon]
interval = "1s"

[api]
listen = "127.0.0.1:{api_port}"
token = "pool-token-0123456789"

[aws]
region = "us-east-1"

[pool.builders]
image = "ami-0123456789abcdef0"
instance_types = [ {{ type = "t3.micro", capacity = 1 }}, {{ type = "t3.large", capacity = 2, max_price = 0.05 }} ]
zones = ["us-east-1a", "us-east-1b"]
min_capacity = 0
max_capacity = 8
jobs_per_capacity = 1
scale_down_after = "3s"
demand = {{ http = "http://127.0.0.1:{demand_port}/v1/jobs?state=PENDING", timeout = "2s" }}
tags = {{ team = "ci" }}
"#
    )
}

/// Live pool instances in the emulator: (type, market) of each.
fn pool_instances(cli: &Cli) -> Vec<(String, String)> {
    let out = cli.moto.boto(
        "r = ec2.describe_instances(Filters=[{'Name': 'tag:spotkeeper:pool', 'Values': ['builders']}, {'Name': 'instance-state-name', 'Values': ['pending', 'running']}])['Reservations']\n\
         print(json.dumps([[i['InstanceType'], i.get('InstanceLifecycle', 'on-demand')] for x in r for i in x['Instances']]))",
    );
    serde_json::from_str(out.trim()).expect("json")
}

fn units(instances: &[(String, String)]) -> usize {
    instances
        .iter()
        .map(|(t, _)| if t == "t3.large" { 2 } else { 1 })
        .sum()
}

fn show(cli: &Cli) -> Value {
    cli.json(&["pool", "show", "builders", "--json"])
}

/// Waits until `pool show` has `desired` and the emulator `units` live units.
fn wait_for(cli: &Cli, serve: &Serve, desired: i64, want_units: usize) -> Vec<(String, String)> {
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            let live = pool_instances(cli);
            (show(cli)["desired"] == desired && units(&live) == want_units).then_some(live)
        },
        || {
            format!(
                "pool not at desired {desired} / {want_units} units within 60s: {:#}\nlive: {:?}\n{}",
                show(cli),
                pool_instances(cli),
                serve.log()
            )
        },
    )
}

#[test]
fn a_pool_follows_its_demand_within_max_and_holds_when_the_demand_source_fails() {
    let answer = Arc::new(Mutex::new(Demand::Jobs(0)));
    let demand_port = demand_server(answer.clone());
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config(demand_port, api_port));
    // t3.large is over its own ceiling at first.
    cli.moto
        .set_market(&[("t3.micro", Some(0.02)), ("t3.large", Some(0.06))], &[]);
    cli.ok(&["setup"]);
    let serve = Serve::start(&cli);

    // 0 pending: nothing.
    wait_for(&cli, &serve, 0, 0);

    // 3 pending: three t3.micro, the large type excluded by its max_price.
    *answer.lock().expect("lock") = Demand::Jobs(3);
    let live = wait_for(&cli, &serve, 3, 3);
    assert!(
        live.iter().all(|(t, m)| t == "t3.micro" && m == "spot"),
        "{live:?}"
    );
    let view = show(&cli);
    assert!(
        view["events"]
            .as_array()
            .expect("events")
            .iter()
            .chain(view["reasons"].as_array().expect("reasons").iter())
            .any(|e| e.to_string().contains("over the price ceiling")),
        "{view:#}"
    );

    // 5 pending, large now cheaper per unit (0.03 / 2): two more units come
    // as one t3.large (capacity weights).
    cli.moto
        .set_market(&[("t3.micro", Some(0.02)), ("t3.large", Some(0.03))], &[]);
    // A pass reads prices before the demand: wait until one has seen these.
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            (!show(&cli)["reasons"]
                .to_string()
                .contains("over the price ceiling"))
            .then_some(())
        },
        || format!("the new price was never read\n{}", serve.log()),
    );
    *answer.lock().expect("lock") = Demand::Jobs(5);
    let live = wait_for(&cli, &serve, 5, 5);
    assert_eq!(live.len(), 4, "3 × micro + 1 × large: {live:?}");

    // 12 pending: clamped to max_capacity 8.
    *answer.lock().expect("lock") = Demand::Jobs(12);
    let live = wait_for(&cli, &serve, 8, 8);
    assert!(units(&live) <= 8);

    // The demand source fails: the pool holds at 8, says why, never shrinks.
    for bad in [Demand::Status500, Demand::Garbage] {
        *answer.lock().expect("lock") = bad.clone();
        let view = eventually(
            Duration::from_secs(30),
            Duration::from_millis(300),
            || Some(show(&cli)).filter(|v| v["held"].is_string()),
            || format!("never held on {bad:?}: {:#}", show(&cli)),
        );
        assert_eq!(view["desired"], 8, "{view:#}");
        // Several passes (interval 1s, scale_down_after 3s) later: still 8.
        common::wait_passes(api_port, 4, &serve);
        assert_eq!(units(&pool_instances(&cli)), 8, "{bad:?}\n{}", serve.log());
    }
    let events = show(&cli)["events"].to_string();
    assert!(events.contains("demand-failed"), "{events}");
    let metrics = cli.moto.boto(&format!(
        "import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:{api_port}/metrics').read().decode())"
    ));
    assert!(
        metrics.contains("spotkeeper_pool_demand_failures_total{pool=\"builders\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spotkeeper_pool_desired_units{pool=\"builders\"} 8"),
        "{metrics}"
    );

    // 0 pending: after the idle period, back down to min_capacity 0.
    *answer.lock().expect("lock") = Demand::Jobs(0);
    wait_for(&cli, &serve, 0, 0);

    // `pool list` shows it; the daemon stops cleanly.
    let out = cli.ok(&["pool", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("builders"),
        "{}",
        describe(&out)
    );
    assert!(serve.stop().success());
}

#[test]
fn pool_show_names_unknown_pools_and_the_ones_there_are() {
    let cli = Cli::with_config(&config(
        spotkeeper_testkit::closed_port(),
        spotkeeper_testkit::closed_port(),
    ));
    let out = cli.run(&["pool", "show", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there are: builders"),
        "{}",
        describe(&out)
    );
    // Before any pass: no desired yet, nothing running.
    let view = cli.json(&["pool", "show", "builders", "--json"]);
    assert_eq!(view["desired"], Value::Null);
    assert_eq!(view["current"], 0);
}
