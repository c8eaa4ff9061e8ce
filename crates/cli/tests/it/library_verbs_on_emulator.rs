//! The library's verbs on the command line, against the emulator (and a real
//! sshd on loopback for `exec` and `ssh`): image, snapshot, image delete,
//! volume add, exec, ssh.

use crate::common::{CONFIG, Cli, describe, stderr};
use spotkeeper_testkit::{Sshd, closed_port};

#[test]
fn image_resolves_aliases_and_ami_ids() {
    let cli = Cli::new();
    let al = cli.json(&["image", "al2023", "--json"]);
    assert!(
        al["image_id"]
            .as_str()
            .is_some_and(|i| i.starts_with("ami-")),
        "{al}"
    );
    let out = cli.ok(&["image", "ubuntu:16.04"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ami-785db401",
        "DescribeImages fallback"
    );
    let bad = cli.run(&["image", "debian:12"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(
        stderr(&bad).contains("is neither an AMI id"),
        "{}",
        describe(&bad)
    );
    let missing = cli.run(&["image", "ubuntu:99.04"]);
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
}

#[test]
fn up_resolves_an_image_alias_from_the_config() {
    let cli = Cli::with_config(&CONFIG.replace("ami-0123456789abcdef0", "ubuntu:16.04"));
    let inst = cli.json(&["up", "dev", "--json"]);
    assert_eq!(inst["image_id"], "ami-785db401");
}

#[test]
fn snapshot_makes_a_tagged_image_that_image_delete_removes() {
    let cli = Cli::new();
    let out = cli.run(&["snapshot", "dev"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no live instance yet: {}",
        describe(&out)
    );
    assert!(
        stderr(&out).contains("has no live instance"),
        "{}",
        describe(&out)
    );

    cli.ok(&["up", "dev"]);
    let image = cli.json(&["snapshot", "dev", "--json"])["image"].clone();
    let id = image["id"].as_str().expect("image id").to_owned();
    assert_eq!(image["state"], "available");
    assert_eq!(image["tags"]["spotkeeper:box"], "dev");
    assert_eq!(image["tags"]["spotkeeper:owner"], "clitest");
    assert!(
        image["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("spotkeeper-dev-")),
        "{image}"
    );

    let del = cli.json(&["image", "delete", &id, "--json"]);
    assert_eq!(del["deleted_snapshots"], image["snapshot_ids"]);
    cli.ok(&["image", "delete", &id]);
    let alias = cli.run(&["image", "delete", "al2023"]);
    assert_eq!(alias.status.code(), Some(2), "{}", describe(&alias));
}

#[test]
fn volume_add_attaches_at_the_next_free_device() {
    let cli = Cli::new();
    cli.ok(&["up", "dev"]);
    let v1 = cli.json(&["volume", "add", "dev", "--size", "8", "--json"]);
    let v2 = cli.json(&[
        "volume", "add", "dev", "--size", "4", "--type", "gp2", "--json",
    ]);
    assert_eq!(v1["attachments"][0][1], "/dev/sdf", "{v1}");
    assert_eq!(v2["attachments"][0][1], "/dev/sdg", "{v2}");
    assert_eq!(
        (v1["size_gb"].as_i64(), v2["kind"].as_str()),
        (Some(8), Some("gp2"))
    );
    let bad = cli.run(&["volume", "add", "dev", "--size", "0"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    let bad = cli.run(&["volume", "add", "dev", "--size", "8", "--type", "floppy"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}

fn ssh_config(sshd: &Sshd, port: u16) -> String {
    CONFIG.replace(
        "tags =",
        &format!(
            "ssh = {{ user = \"{}\", key_file = \"{}\", port = {port}, host = \"127.0.0.1\", known_hosts = \"{}\" }}\ntags =",
            sshd.user(),
            sshd.key_file().display(),
            sshd.known_hosts().display()
        ),
    )
}

#[test]
fn exec_runs_on_the_box_and_exits_with_the_remote_status() {
    let sshd = Sshd::start();
    let cli = Cli::with_config(&ssh_config(&sshd, sshd.port()));
    let none = cli.run(&["exec", "dev", "--", "true"]);
    assert_eq!(none.status.code(), Some(1), "{}", describe(&none));

    cli.ok(&["up", "dev"]);
    let out = cli.run(&[
        "exec",
        "dev",
        "--",
        "echo hello from $(hostname >/dev/null; echo box); exit 7",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from box\n");
    let ok = cli.run(&["exec", "dev", "--", "test", "1", "=", "1"]);
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    // The words are kept, as `kubectl exec` keeps them.
    let three = cli.run(&["exec", "dev", "--", "sh", "-c", "exit 3"]);
    assert_eq!(three.status.code(), Some(3), "{}", describe(&three));
    let quoted = cli.run(&[
        "exec",
        "dev",
        "--",
        "printf",
        "[%s]\\n",
        "a b",
        "it's",
        "\"q\" $HOME",
    ]);
    assert_eq!(quoted.status.code(), Some(0), "{}", describe(&quoted));
    assert_eq!(
        String::from_utf8_lossy(&quoted.stdout),
        "[a b]\n[it's]\n[\"q\" $HOME]\n"
    );

    let session = cli
        .command(&["ssh", "dev"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    assert_eq!(session.status.code(), Some(0), "{}", describe(&session));

    let missing_cmd = cli.run(&["exec", "dev"]);
    assert_eq!(
        missing_cmd.status.code(),
        Some(2),
        "{}",
        describe(&missing_cmd)
    );
}

#[test]
fn exec_against_a_refused_port_exits_255_with_ssh_words() {
    let sshd = Sshd::start();
    let cli = Cli::with_config(&ssh_config(&sshd, closed_port()));
    cli.ok(&["up", "dev"]);
    let out = cli.run(&["exec", "dev", "--", "true"]);
    assert_eq!(out.status.code(), Some(255), "{}", describe(&out));
    assert!(stderr(&out).contains("refused"), "{}", describe(&out));
}
