//! Remote commands against a real sshd the test starts on 127.0.0.1, with the
//! instance's address overridden to it: output and exit codes, cloud-init's
//! three states, and clear errors when the connection is refused or hangs.

use std::time::Duration;

use spotkeeper_cloud::{
    AwsCloud, CloudInitStatus, ImageId, InstanceHandle, LaunchSpec, SshError, SshSettings,
};
use spotkeeper_testkit::{FakeCloudInit, Moto, REGION, Sshd, closed_port};

fn settings(sshd: &Sshd) -> SshSettings {
    SshSettings {
        user: sshd.user().to_owned(),
        key_file: Some(sshd.key_file()),
        port: sshd.port(),
        host: Some("127.0.0.1".into()),
        known_hosts: Some(sshd.known_hosts()),
        connect_timeout: Duration::from_secs(5),
        options: vec!["LogLevel=ERROR".into()],
        ..SshSettings::default()
    }
}

async fn instance(moto: &Moto, ssh: SshSettings) -> InstanceHandle {
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let handle = cloud
        .launch_instance(
            &LaunchSpec::new(ImageId::new("ami-785db401"), "t3.micro"),
            true,
        )
        .await
        .expect("launch");
    assert!(
        handle.info().public_ip.is_some(),
        "the emulator gave it a (fake) public address we must not dial"
    );
    handle.with_ssh(ssh)
}

#[tokio::test]
async fn execute_returns_stdout_stderr_and_the_exit_status() {
    let (moto, sshd) = (Moto::start(), Sshd::start());
    let inst = instance(&moto, settings(&sshd)).await;
    inst.wait_for_ssh(Duration::from_secs(20))
        .await
        .expect("ssh up");
    let out = inst
        .execute("echo hello; echo oops >&2; exit 3", Duration::from_secs(20))
        .await
        .expect("ran");
    assert_eq!(out.stdout, "hello\n");
    assert_eq!(out.stderr, "oops\n");
    assert_eq!(out.status, 3);
    assert!(!out.success());
    let ok = inst
        .execute("true", Duration::from_secs(20))
        .await
        .expect("ran");
    assert!(ok.success());
}

#[tokio::test]
async fn wait_for_cloud_init_reports_done_error_and_waits_while_running() {
    let (moto, sshd) = (Moto::start(), Sshd::start());
    let inst = instance(&moto, settings(&sshd)).await;
    sshd.set_cloud_init(FakeCloudInit::Done);
    assert_eq!(
        inst.wait_for_cloud_init(Duration::from_secs(20))
            .await
            .expect("done"),
        CloudInitStatus::Done
    );
    sshd.set_cloud_init(FakeCloudInit::Error);
    match inst
        .wait_for_cloud_init(Duration::from_secs(20))
        .await
        .expect("answered")
    {
        CloudInitStatus::Error(detail) => assert!(detail.contains("boom"), "{detail}"),
        other => panic!("expected an error, got {other:?}"),
    }
    sshd.set_cloud_init(FakeCloudInit::NotYet(2));
    assert_eq!(
        inst.wait_for_cloud_init(Duration::from_secs(30))
            .await
            .expect("eventually done"),
        CloudInitStatus::Done
    );
    sshd.set_cloud_init(FakeCloudInit::NotYet(100));
    let err = inst
        .wait_for_cloud_init(Duration::from_secs(3))
        .await
        .expect_err("never finishes");
    assert!(matches!(err, SshError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn a_refused_connection_is_a_clear_error() {
    let (moto, sshd) = (Moto::start(), Sshd::start());
    let port = closed_port();
    let inst = instance(
        &moto,
        SshSettings {
            port,
            ..settings(&sshd)
        },
    )
    .await;
    let err = inst
        .execute("true", Duration::from_secs(20))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, SshError::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("refused"),
        "{text}"
    );
    let err = inst
        .wait_for_ssh(Duration::from_secs(3))
        .await
        .expect_err("still refused");
    assert!(err.to_string().contains("still failing"), "{err}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_clearly() {
    let moto = Moto::start();
    // Accepts TCP but never speaks SSH.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let ssh = SshSettings {
        user: "nobody".into(),
        port,
        host: Some("127.0.0.1".into()),
        connect_timeout: Duration::from_secs(1),
        known_hosts: Some(std::env::temp_dir().join("spotkeeper-test-known-hosts")),
        ..SshSettings::default()
    };
    let inst = instance(&moto, ssh).await;
    let err = inst
        .execute("true", Duration::from_secs(4))
        .await
        .expect_err("no banner");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        text.contains("timed out") || text.contains("did not finish"),
        "{text}"
    );
    drop(silent);
}

#[tokio::test]
async fn files_go_up_and_down_scripts_run_and_wait_includes_cloud_init_with_ssh() {
    let (moto, sshd) = (Moto::start(), Sshd::start());
    sshd.set_cloud_init(FakeCloudInit::Done);
    let mut inst = instance(&moto, settings(&sshd)).await;
    // With SSH settings, wait means booted and cloud-init done (pycloudlib's meaning).
    inst.wait().await.expect("running, ssh, cloud-init done");

    let dir = tempfile::tempdir().expect("dir");
    let up = dir.path().join("up.txt");
    std::fs::write(&up, "hello over scp\n").expect("write");
    let remote = dir.path().join("remote.txt");
    inst.push_file(&up, &remote.display().to_string(), Duration::from_secs(20))
        .await
        .expect("pushed");
    assert_eq!(
        std::fs::read_to_string(&remote).expect("arrived"),
        "hello over scp\n"
    );
    let down = dir.path().join("down.txt");
    inst.pull_file(
        &remote.display().to_string(),
        &down,
        Duration::from_secs(20),
    )
    .await
    .expect("pulled");
    assert_eq!(
        std::fs::read_to_string(&down).expect("came back"),
        "hello over scp\n"
    );
    let missing = inst
        .pull_file("/no/such/file", &down, Duration::from_secs(20))
        .await
        .expect_err("no such file");
    assert!(missing.to_string().contains("No such file"), "{missing}");

    let out = inst
        .run_script(
            "#!/bin/sh\necho \"from a script: $0\" | grep -c spotkeeper-script\nexit 4\n",
            Duration::from_secs(20),
        )
        .await
        .expect("ran");
    assert_eq!((out.stdout.as_str(), out.status), ("1\n", 4));
    let plain = inst
        .run_script("x=2\necho $((x * 21))\n", Duration::from_secs(20))
        .await
        .expect("ran");
    assert_eq!(plain.stdout, "42\n");
    let left = inst
        .execute(
            "ls /tmp | grep -c spotkeeper-script || true",
            Duration::from_secs(20),
        )
        .await
        .expect("ran");
    assert_eq!(left.stdout.trim(), "0", "scripts are removed after running");

    // cloud-init in error: a waiting wait says so.
    sshd.set_cloud_init(FakeCloudInit::Error);
    let err = inst.wait().await.expect_err("cloud-init failed");
    assert!(
        err.to_string().contains("cloud-init on") && err.to_string().contains("boom"),
        "{err}"
    );
}

#[tokio::test]
async fn clean_resets_cloud_init_and_update_upgrades_with_the_package_manager() {
    let (moto, sshd) = (Moto::start(), Sshd::start());
    let inst = instance(&moto, settings(&sshd)).await;
    inst.wait_for_ssh(Duration::from_secs(20))
        .await
        .expect("ssh up");
    let out = inst.clean(Duration::from_secs(20)).await.expect("ran");
    assert!(out.success(), "{out:?}");
    assert!(
        sshd.calls("cloud-init")
            .contains(&"clean --logs --machine-id --seed".to_owned()),
        "{:?}",
        sshd.calls("cloud-init")
    );

    sshd.fake_command("apt-get", "exit 0");
    let out = inst.update(Duration::from_secs(20)).await.expect("ran");
    assert!(out.success(), "{out:?}");
    assert_eq!(sshd.calls("apt-get"), ["-q update", "-q -y dist-upgrade"]);
    // A failing upgrade is the command's status, not hidden.
    sshd.fake_command("apt-get", "exit 100");
    let out = inst.update(Duration::from_secs(20)).await.expect("ran");
    assert_eq!(out.status, 100);
}
