//! `spotkeeper drill BOX` against the emulator with the daemon running: the
//! warning goes through the box's queue like EventBridge's, the recovery is
//! followed step by step (volume and DNS included), every step happens once,
//! and the verdict against the box's slo is right for a fast box and for one
//! whose ready check is slow.

use serde_json::Value;

use crate::common::{CONFIG, Cli, Serve, describe, ssh_to, wait_passes};

fn config(api_port: u16, extra: &str) -> String {
    let text = CONFIG
        .replace(
            "[aws]",
            &format!(
                "[daemon]\ninterval = \"1h\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n\n[aws]"
            ),
        )
        .replace(
            "tags =",
            &format!(
                "data_volume = {{ name = \"dev-data\", size_gb = 5 }}\n\
                 dns = {{ zone = \"example.com\", name = \"dev.example.com\" }}\n{extra}\ntags ="
            ),
        )
        .replace("ready = { check = \"none\" }\n", "");
    if extra.contains("ready =") {
        text
    } else {
        text.replace("tags =", "ready = { check = \"none\" }\ntags =")
    }
}

/// A CLI on `extra`'s box, set up and up, with the daemon serving.
fn ready(extra: &str) -> (Cli, Serve) {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config(api_port, extra));
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='d')");
    cli.ok(&["setup"]);
    cli.ok(&["up", "dev"]);
    let serve = Serve::start(&cli);
    wait_passes(api_port, 1, &serve);
    (cli, serve)
}

fn events(cli: &Cli, kind: &str) -> Vec<String> {
    cli.state_rows(&format!(
        "SELECT message FROM events WHERE kind = '{kind}' ORDER BY id"
    ))
    .into_iter()
    .map(|r| r.join("\t"))
    .collect()
}

#[test]
fn a_drill_prints_the_recovery_step_by_step_and_passes_within_the_slo() {
    // With a hook on the warned instance (the test's sshd stands in for it).
    let sshd = spotkeeper_testkit::Sshd::start();
    let (cli, serve) = ready(&format!(
        "slo = {{ recover_within = \"1m\" }}\n\
         ssh = {}\n\
         on_interruption = {{ command = \"sleep 1\", timeout = \"20s\" }}",
        ssh_to(&sshd)
    ));
    let old = cli.live()[0]["instance_id"].clone();
    let out = cli.run(&["drill", "dev"]);
    let log = serve.log();
    assert_eq!(out.status.code(), Some(0), "{}\n{log}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for step in [
        "warning sent",
        "replacement requested",
        "replacement running",
        "volumes attached",
        "ready",
        "DNS/Elastic IP moved",
        "on_interruption hook ended",
        "old instance gone",
    ] {
        assert_eq!(
            text.lines()
                .filter(|l| l.ends_with(&format!("  {step}")))
                .count(),
            1,
            "{step}:\n{text}"
        );
    }
    assert!(text.contains("within the slo of 1m: pass"), "{text}");

    // Every step once: one replacement, the volume and the name on it.
    let live = cli.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_ne!(live[0]["instance_id"], old);
    assert_eq!(
        events(&cli, "launch").len(),
        2,
        "up's and the replacement's"
    );
    assert_eq!(events(&cli, "replaced").len(), 1);
    // Marked as a drill where the daemon recorded the warning, and the
    // drill's own events (sent, verdict).
    let warned = events(&cli, "spot-interruption");
    assert!(
        warned.len() == 1 && warned[0].contains("(drill)"),
        "{warned:?}"
    );
    let drill = events(&cli, "drill");
    assert_eq!(drill.len(), 2, "{drill:?}");
    assert!(drill[1].contains("pass"), "{drill:?}");
    assert!(serve.stop().success());
}

#[test]
fn a_box_whose_ready_check_is_slow_fails_its_slo_and_the_late_step_is_named() {
    let (cli, serve) = ready(
        "ready = { check = \"command\", command = \"sleep 6\", timeout = \"1m\" }\n\
         slo = { recover_within = \"3s\" }",
    );
    let out = cli.run(&["drill", "dev", "--json"]);
    let log = serve.log();
    assert_eq!(out.status.code(), Some(1), "{}\n{log}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["passed"], false);
    assert_eq!(report["verdict"]["verdict"], "late", "{report}");
    let late = report["verdict"]["step"].as_str().expect("a step");
    let seconds = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == late)
        .and_then(|s| s["seconds"].as_f64())
        .expect("the late step was seen, late");
    assert!(seconds > 3.0, "{report}");
    // The ready check took its 6 s: recovered, but late.
    let ready = report["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["step"] == "ready")
        .and_then(|s| s["seconds"].as_f64())
        .expect("ready was seen");
    assert!(ready >= 6.0, "{report}");
    assert!(serve.stop().success());
}

#[test]
fn a_drill_of_a_box_without_a_live_instance_or_queue_says_what_is_missing() {
    let cli = Cli::with_config(&config(spotkeeper_testkit::closed_port(), ""));
    cli.moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='d')");
    let none = cli.run(&["drill", "dev"]);
    assert_eq!(none.status.code(), Some(1), "{}", describe(&none));
    assert!(
        describe(&none).contains("box dev has no live instance: `up` it first"),
        "{}",
        describe(&none)
    );
    cli.ok(&["up", "dev"]);
    let no_queue = cli.run(&["drill", "dev"]);
    assert_eq!(no_queue.status.code(), Some(1));
    assert!(
        describe(&no_queue).contains("run `spotkeeper setup`"),
        "{}",
        describe(&no_queue)
    );
    let wrong = cli.run(&["drill", "dev", "--wait", "soon"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", describe(&wrong));
    // --fis takes an IAM role's ARN, refused before anything is asked of AWS.
    let not_a_role = cli.run(&["drill", "dev", "--fis", "arn:aws:iam::123456789012:user/me"]);
    assert_eq!(
        not_a_role.status.code(),
        Some(2),
        "{}",
        describe(&not_a_role)
    );
    assert!(
        describe(&not_a_role).contains("not an IAM role's ARN"),
        "{}",
        describe(&not_a_role)
    );
    let both = cli.run(&[
        "drill",
        "dev",
        "--rebalance",
        "--fis",
        "arn:aws:iam::123456789012:role/spotkeeper-fis",
    ]);
    assert_eq!(both.status.code(), Some(2), "{}", describe(&both));
    // Without the queue the FIS drill stops where the plain one does.
    let fis = cli.run(&[
        "drill",
        "dev",
        "--fis",
        "arn:aws:iam::123456789012:role/spotkeeper-fis",
    ]);
    assert_eq!(fis.status.code(), Some(1), "{}", describe(&fis));
    assert!(
        describe(&fis).contains("run `spotkeeper setup`"),
        "{}",
        describe(&fis)
    );
}
