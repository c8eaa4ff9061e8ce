//! `on_interruption` against the emulator: on a spot warning the daemon runs
//! the box's hook on the warned instance (over SSH, here the test's sshd on
//! loopback) beside the replacement, and hands the data volume over only
//! after the hook ended or was cut at its timeout. The order is proven by
//! recorded times: the calls' arrival at the emulator's proxy and the times
//! the hook itself wrote.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use spotkeeper_testkit::{Answer, Receiver, Sshd};

use crate::common::{CONFIG, Cli, Serve, ssh_to, unix_now};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/fixtures/events");

fn config(cli: &Cli, sshd: &Sshd, hook: &str) -> String {
    CONFIG
        .replace(
            "[aws]",
            &format!(
                "[daemon]\ninterval = \"1h\"\n\n[api]\nlisten = \"127.0.0.1:{}\"\n\n[aws]\nendpoint_url = \"{}\"",
                spotkeeper_testkit::closed_port(),
                cli.moto.proxy_endpoint()
            ),
        )
        .replace(
            "tags =",
            &format!(
                "data_volume = {{ name = \"dev-data\", size_gb = 5 }}\n\
                 ssh = {}\n\
                 on_interruption = {hook}\ntags =",
                ssh_to(sshd)
            ),
        )
}

/// The warning for `instance`, issued now (as EventBridge would).
fn warn(cli: &Cli, instance: &str) {
    let time = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let body = std::fs::read_to_string(format!("{FIXTURES}/spot-interruption-warning.json"))
        .expect("fixture")
        .replace("i-1234567890abcdef0", instance)
        .replace("2026-11-02T09:59:19Z", &time);
    cli.moto.boto(&format!(
        "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-clitest-events')['QueueUrl']\nsqs.send_message(QueueUrl=u, MessageBody={})",
        serde_json::to_string(&body).expect("quoted")
    ));
}

/// The instance the data volume is attached to, if any.
fn volume_holder(cli: &Cli) -> Option<String> {
    let out = cli.moto.boto(
        "v = ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\n\
         print(json.dumps([a['InstanceId'] for x in v for a in x['Attachments']]))",
    );
    let held: Vec<String> = serde_json::from_str(out.trim()).expect("json");
    held.into_iter().next()
}

fn read_time(path: &Path) -> Option<f64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits until the data volume is attached to an instance other than `old`.
fn wait_moved(cli: &Cli, old: &str, within: Duration, serve: &Serve) -> String {
    spotkeeper_testkit::eventually(
        within,
        Duration::from_millis(200),
        || volume_holder(cli).filter(|h| h != old),
        || format!("the volume did not move\n{}", serve.log()),
    )
}

/// The daemon, once it holds the box: a warning it handles then starts the
/// hook at once, as these tests time it (one handled before is left to the
/// holder's next pass, which starts the hook later).
fn holding(cli: &Cli) -> Serve {
    let serve = Serve::start(cli);
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let log = serve.log();
            log.lines()
                .any(|l| l.contains(" took ") && l.contains("box:dev"))
                .then_some(())
        },
        || format!("the daemon never took the box's lease\n{}", serve.log()),
    );
    serve
}

fn hook_events(cli: &Cli) -> Vec<Vec<String>> {
    cli.state_rows("SELECT kind, message FROM events WHERE kind LIKE 'hook%' ORDER BY id")
}

/// The hook events, once there is one (within 10 s; `log` says why not).
fn first_hook_events(cli: &Cli, log: &str) -> Vec<Vec<String>> {
    spotkeeper_testkit::eventually(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || Some(hook_events(cli)).filter(|e| !e.is_empty()),
        || format!("no hook event\n{log}"),
    )
}

#[test]
fn the_hook_runs_beside_the_replacement_and_the_volume_moves_after_it() {
    let sshd = Sshd::start();
    let marks = tempfile::tempdir().expect("tempdir");
    let (start, end) = (marks.path().join("start"), marks.path().join("end"));
    let hook = format!(
        "{{ command = \"date +%s.%N > {}; sleep 3; date +%s.%N > {}\", timeout = \"30s\" }}",
        start.display(),
        end.display()
    );
    let cli = Cli::with_config(CONFIG);
    cli.write_config(&config(&cli, &sshd, &hook));
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    assert_eq!(volume_holder(&cli).as_deref(), Some(old.as_str()));
    let serve = holding(&cli);

    let sent = unix_now();
    warn(&cli, &old);
    let new = wait_moved(&cli, &old, Duration::from_secs(60), &serve);
    let attached = unix_now();

    let started = read_time(&start).expect("the hook started");
    let ended = read_time(&end).expect("the hook ended");
    let launch = cli.proxy_calls("RunInstances", sent);
    let gate = cli.proxy_calls("CreateTags", sent);
    let terminate = cli.proxy_calls("TerminateInstances", sent);
    let attach = cli.proxy_calls("AttachVolume", sent);
    let log = serve.log();
    assert_eq!(launch.len(), 1, "one replacement: {launch:?}\n{log}");
    // The gate is set before the replacement is asked for ...
    assert!(
        gate[0] < launch[0],
        "gate {gate:?}, launch {launch:?}\n{log}"
    );
    // ... the replacement does not wait for the hook ...
    assert!(
        launch[0] < ended,
        "launch {launch:?}, hook ended {ended}\n{log}"
    );
    assert!(started < ended);
    // ... and the old instance and its volume are let go only after it.
    assert_eq!(terminate.len(), 1, "{terminate:?}\n{log}");
    assert!(
        ended < terminate[0],
        "hook ended {ended}, terminate {terminate:?}\n{log}"
    );
    assert!(terminate[0] <= attach[0], "{terminate:?} {attach:?}\n{log}");
    assert!(
        attached - sent < 30.0,
        "moved {:.1} s after the warning",
        attached - sent
    );
    assert_ne!(new, old);

    // Recorded (and so notified) with its status and duration; the outcome
    // is on the instance for every other daemon.
    let events = first_hook_events(&cli, &log);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0][0], "hook");
    // Its duration: the 3 s sleep, and ssh's start on a loaded machine.
    let took: f64 = events[0][1]
        .strip_prefix(&format!("on_interruption on {old} exited 0 after "))
        .and_then(|t| t.strip_suffix(" s"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{events:?}"));
    assert!((3.0..30.0).contains(&took), "{events:?}");
    let tag = cli.moto.boto(&format!(
        "t = ec2.describe_tags(Filters=[{{'Name': 'resource-id', 'Values': ['{old}']}}, {{'Name': 'key', 'Values': ['spotkeeper:hook']}}])['Tags']\nprint(t[0]['Value'] if t else '')"
    ));
    assert_eq!(tag.trim(), "done");
    assert!(serve.stop().success());
}

#[test]
fn a_hook_that_hangs_is_cut_at_its_timeout_and_the_volume_still_moves() {
    let sshd = Sshd::start();
    let hook = "{ command = \"sleep 600\", timeout = \"3s\" }";
    // A sink with the default kinds hears of it.
    let receiver = Receiver::start(Answer::Ok, 0);
    let cli = Cli::with_config(CONFIG);
    cli.write_config(&format!(
        "{}\n[[notify]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}\"\n",
        config(&cli, &sshd, hook),
        receiver.url("/hook")
    ));
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    let serve = holding(&cli);

    let sent = unix_now();
    warn(&cli, &old);
    wait_moved(&cli, &old, Duration::from_secs(60), &serve);
    let attach = cli.proxy_calls("AttachVolume", sent);
    let log = serve.log();
    // Cut at 3 s, not waited for 600 s; well inside the two minutes.
    assert!(
        attach[0] - sent >= 3.0,
        "attached {:.1} s after\n{log}",
        attach[0] - sent
    );
    assert!(
        attach[0] - sent < 20.0,
        "attached {:.1} s after\n{log}",
        attach[0] - sent
    );
    let events = first_hook_events(&cli, &log);
    assert_eq!(events[0][0], "hook-failed", "{events:?}");
    assert!(events[0][1].contains("cut at its timeout"), "{events:?}");
    let got = receiver.wait_for(
        Duration::from_secs(20),
        "the hook-failed notification",
        |g| g.iter().any(|r| r.body.contains("\"hook-failed\"")),
    );
    let sent: Value = serde_json::from_str(
        &got.iter()
            .find(|r| r.body.contains("\"hook-failed\""))
            .expect("found")
            .body,
    )
    .expect("json");
    assert_eq!(sent["box"], "dev");
    assert!(
        sent["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cut at its timeout"),
        "{sent}"
    );
    assert!(serve.stop().success());
}

#[test]
fn with_the_agent_the_daemon_runs_no_hook_and_hands_over_when_the_agent_says_done() {
    use crate::agent_on_loopback::{Imds, agent, start_imds};
    use std::sync::{Arc, Mutex};

    let sshd = Sshd::start();
    // The agent's install (on `up` and on the replacement) lands nowhere.
    sshd.fake_command("install", "true");
    let marks = tempfile::tempdir().expect("tempdir");
    let (ran, end) = (marks.path().join("ran"), marks.path().join("end"));
    let command = format!(
        "date +%s.%N >> {}; sleep 2; date +%s.%N > {}",
        ran.display(),
        end.display()
    );
    // The same command for both: a run by the daemon (over SSH to the
    // test's sshd) would add a second line.
    let hook = format!("{{ command = \"{command}\", timeout = \"30s\" }}\nagent = true");
    let cli = Cli::with_config(CONFIG);
    cli.write_config(&config(&cli, &sshd, &hook));
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    let state = Arc::new(Mutex::new(Imds {
        instance: old.clone(),
        ..Imds::default()
    }));
    let port = start_imds(state.clone());
    let mut on_instance = agent(
        &cli.moto,
        port,
        &command,
        &marks.path().join("done"),
        &marks.path().join("agent.log"),
    );
    let serve = holding(&cli);

    // AWS posts the action on the instance and sends the event.
    let due = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(120));
    state.lock().expect("state").action = Some(format!(
        "{{\"action\": \"terminate\", \"time\": \"{due}\"}}"
    ));
    let sent = unix_now();
    warn(&cli, &old);
    wait_moved(&cli, &old, Duration::from_secs(60), &serve);
    let ended = read_time(&end).expect("the hook ended");
    let terminate = cli.proxy_calls("TerminateInstances", sent);
    let log = serve.log();
    assert!(
        ended < terminate[0],
        "hook ended {ended}, terminate {terminate:?}\n{log}"
    );
    // Handed over on the agent's word, not at the 30 s deadline.
    assert!(
        terminate[0] - sent < 15.0,
        "terminated {:.1} s after\n{log}",
        terminate[0] - sent
    );
    let _ = on_instance.kill();
    let _ = on_instance.wait();
    assert_eq!(
        std::fs::read_to_string(&ran).expect("ran").lines().count(),
        1,
        "the hook ran once\n{log}"
    );
    assert!(
        hook_events(&cli).is_empty(),
        "the daemon ran no hook: {:?}",
        hook_events(&cli)
    );
    assert!(
        !sshd.calls("install").is_empty(),
        "the agent was put on the instances"
    );
    assert!(serve.stop().success());
}

#[test]
fn up_with_the_agent_puts_this_binary_on_the_instance_and_the_unit_in_its_user_data() {
    let sshd = Sshd::start();
    let marks = tempfile::tempdir().expect("tempdir");
    let installed = marks.path().join("installed");
    // `install -m 0755 SRC DST`, as the SSH user would run it: the copy is kept here.
    sshd.fake_command("install", &format!("cp \"$3\" {}", installed.display()));
    let cli = Cli::with_config(CONFIG);
    let hook = "{ command = \"sync\" }\nagent = true";
    cli.write_config(&config(&cli, &sshd, hook));
    let up = cli.json(&["up", "dev", "--json"]);
    let id = up["instance_id"].as_str().expect("id");

    let calls = sshd.calls("install");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("-m 0755 /tmp/spotkeeper-agent-"),
        "{calls:?}"
    );
    assert!(
        calls[0].ends_with(" /usr/local/bin/spotkeeper"),
        "{calls:?}"
    );
    let ours = std::fs::metadata(env!("CARGO_BIN_EXE_spotkeeper"))
        .expect("binary")
        .len();
    assert_eq!(std::fs::metadata(&installed).expect("copied").len(), ours);
    // The temporary copy is gone.
    let left: Vec<_> = std::fs::read_dir("/tmp")
        .expect("tmp")
        .flatten()
        .filter(|e| calls[0].contains(&e.path().display().to_string()))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let user_data = cli.moto.boto(&format!(
        "import base64\nv = ec2.describe_instance_attribute(InstanceId='{id}', Attribute='userData')['UserData']['Value']\nprint(base64.b64decode(v).decode())"
    ));
    assert!(
        user_data.contains("spotkeeper-agent.service"),
        "{user_data}"
    );
    assert!(user_data.contains("SK_AGENT:=1"), "{user_data}");
}
