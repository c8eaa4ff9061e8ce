//! `spotkeeper agent` against a fake instance metadata service (IMDSv2 on
//! loopback: a session token from `PUT /latest/api/token`, 401 without it,
//! `spot/instance-action` appearing on cue) and the emulator for its tags.
//! No daemon runs: the hook runs anyway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spotkeeper_testkit::Moto;

const TOKEN: &str = "AQAEAFakeSessionToken==";
const ROLE: &str = "spotkeeper-box";

/// What IMDS answers for an instance profile's credentials.
fn role_credentials() -> String {
    let at = |d: Duration| humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string();
    format!(
        r#"{{"Code": "Success", "LastUpdated": "{}", "Type": "AWS-HMAC", "AccessKeyId": "ASIAFAKEROLEKEY00000", "SecretAccessKey": "fake-role-secret", "Token": "fake-role-session", "Expiration": "{}"}}"#,
        at(Duration::ZERO),
        at(Duration::from_secs(6 * 3600))
    )
}

#[derive(Default)]
pub(crate) struct Imds {
    pub(crate) instance: String,
    pub(crate) action: Option<String>,
    /// Metadata reads that came with the session token.
    pub(crate) reads: u32,
    /// Metadata reads without it (answered 401).
    pub(crate) tokenless: u32,
}

/// Serves IMDSv2 on a loopback port until the process ends.
pub(crate) fn start_imds(state: Arc<Mutex<Imds>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let state = state.clone();
            std::thread::spawn(move || answer(stream, &state));
        }
    });
    port
}

fn answer(mut stream: std::net::TcpStream, state: &Mutex<Imds>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let (mut token, mut ttl, mut length) = (None, false, 0usize);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "x-aws-ec2-metadata-token" => token = Some(v.trim().to_owned()),
            "x-aws-ec2-metadata-token-ttl-seconds" => ttl = true,
            "content-length" => length = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, text) = {
        let mut s = state.lock().expect("state");
        match (method, path) {
            ("PUT", "/latest/api/token") if ttl => ("200 OK", TOKEN.to_owned()),
            ("PUT", _) => ("400 Bad Request", String::new()),
            _ if token.as_deref() != Some(TOKEN) => {
                s.tokenless += 1;
                ("401 Unauthorized", String::new())
            }
            (_, p) => {
                s.reads += 1;
                match p.strip_prefix("/latest/meta-data/").unwrap_or("") {
                    "instance-id" => ("200 OK", s.instance.clone()),
                    "placement/region" => ("200 OK", "us-east-1".to_owned()),
                    // The instance profile's role, as the SDKs' credential
                    // chain reads it on EC2 (the emulator takes any key).
                    "iam/security-credentials/" => ("200 OK", ROLE.to_owned()),
                    p if p == format!("iam/security-credentials/{ROLE}") => {
                        ("200 OK", role_credentials())
                    }
                    "spot/instance-action" => match &s.action {
                        Some(a) => ("200 OK", a.clone()),
                        None => ("404 Not Found", String::new()),
                    },
                    _ => ("404 Not Found", String::new()),
                }
            }
        }
    };
    // IMDS says how long a token lives; the SDKs refuse a token without it.
    let lifetime = if method == "PUT" && status.starts_with("200") {
        "X-Aws-Ec2-Metadata-Token-Ttl-Seconds: 21600\r\n"
    } else {
        ""
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{lifetime}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

pub(crate) fn agent(moto: &Moto, imds: u16, hook: &str, done: &Path, log: &Path) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotkeeper"));
    moto.configure(&mut cmd);
    cmd.env(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        format!("http://127.0.0.1:{imds}"),
    )
    .args([
        "agent",
        "--on-interruption",
        hook,
        "--timeout",
        "10s",
        "--poll",
        "1s",
    ])
    .arg("--done-file")
    .arg(done)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).expect("log"))
    .spawn()
    .expect("start the agent")
}

fn wait_until(what: &str, within: Duration, log: &Path, mut ok: impl FnMut() -> bool) {
    spotkeeper_testkit::eventually(
        within,
        Duration::from_millis(100),
        || ok().then_some(()),
        || {
            format!(
                "{what}; agent said:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        },
    );
}

pub(crate) fn tag(moto: &Moto, instance: &str, key: &str) -> String {
    moto.boto(&format!(
        "t = ec2.describe_tags(Filters=[{{'Name': 'resource-id', 'Values': ['{instance}']}}, {{'Name': 'key', 'Values': ['{key}']}}])['Tags']\nprint(t[0]['Value'] if t else '')"
    ))
    .trim()
    .to_owned()
}

#[test]
fn the_agent_runs_the_hook_once_within_seconds_of_the_warning_and_tags_its_instance() {
    let moto = Moto::start();
    let instance = moto
        .boto("print(ec2.run_instances(ImageId='ami-0123456789abcdef0', MinCount=1, MaxCount=1)['Instances'][0]['InstanceId'])")
        .trim()
        .to_owned();
    let state = Arc::new(Mutex::new(Imds {
        instance: instance.clone(),
        ..Imds::default()
    }));
    let port = start_imds(state.clone());
    // The fake is strict: no token, no answer.
    let mut bare = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the fake answers");
    bare.write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: imds\r\n\r\n")
        .expect("ask");
    let mut said = String::new();
    bare.read_to_string(&mut said).expect("read");
    assert!(said.starts_with("HTTP/1.1 401"), "{said}");
    state.lock().expect("state").tokenless = 0;

    let dir = tempfile::tempdir().expect("tempdir");
    let (ran, done, log) = (
        dir.path().join("ran"),
        dir.path().join("done"),
        dir.path().join("log"),
    );
    let hook = format!("date +%s.%N >> {}", ran.display());
    let mut first = agent(&moto, port, &hook, &done, &log);
    // Polling, and nothing runs before the warning.
    wait_until("three polls", Duration::from_secs(20), &log, || {
        state.lock().expect("state").reads >= 5
    });
    assert!(!ran.exists());

    // The warning appears (the action is due two minutes later).
    let due = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(120));
    let cued = now();
    state.lock().expect("state").action = Some(format!(
        "{{\"action\": \"terminate\", \"time\": \"{due}\"}}"
    ));
    // A whole line: the shell makes the file before `date` writes to it.
    wait_until("the hook", Duration::from_secs(10), &log, || {
        std::fs::read_to_string(&ran).is_ok_and(|s| s.ends_with('\n'))
    });
    let lines = std::fs::read_to_string(&ran).expect("ran");
    let at: f64 = lines
        .lines()
        .next()
        .expect("a line")
        .parse()
        .expect("a time");
    assert!(
        at - cued < 6.0,
        "the hook ran {:.1} s after the warning",
        at - cued
    );
    wait_until("the outcome tag", Duration::from_secs(10), &log, || {
        tag(&moto, &instance, "spotkeeper:hook") == "done"
    });
    let until: u64 = tag(&moto, &instance, "spotkeeper:hook-until")
        .parse()
        .expect("seconds");
    assert!(
        until as f64 > cued && until as f64 <= cued + 13.0,
        "until {until}, cued {cued}"
    );

    // Once: more polls (the warning is still there), no second run; nor
    // after a restart (the done file).
    let reads = state.lock().expect("state").reads;
    wait_until("more polls", Duration::from_secs(10), &log, || {
        state.lock().expect("state").reads >= reads + 3
    });
    let _ = first.kill();
    let _ = first.wait();
    let mut second = agent(&moto, port, &hook, &done, &log);
    let reads = state.lock().expect("state").reads;
    wait_until(
        "the restarted agent's polls",
        Duration::from_secs(10),
        &log,
        || state.lock().expect("state").reads >= reads + 4,
    );
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(
        std::fs::read_to_string(&ran).expect("ran").lines().count(),
        1
    );
    // Never a metadata read without the token.
    assert_eq!(state.lock().expect("state").tokenless, 0);
}

#[test]
fn the_boot_script_installs_an_agent_unit_that_verifies_and_carries_the_hook_verbatim() {
    use spotkeeper_engine::bootstrap::{BootAgent, BootVolumes, user_data};

    let dir = tempfile::tempdir().expect("tempdir");
    let t = dir.path();
    let hook = r#"systemctl stop app && echo "it's $HOME" > /tmp/x"#;
    let volumes = BootVolumes {
        agent: Some(BootAgent {
            command: Some(hook.into()),
            timeout_secs: 45,
        }),
        ..BootVolumes::default()
    };
    let script = user_data("dev", &volumes, None)
        .expect("generate")
        .expect("a script");
    // The hook travels base64-encoded: nothing in it is read by the shell.
    assert!(!script.contains("systemctl stop app"), "{script}");
    let path = t.join("user-data.sh");
    std::fs::write(&path, &script).expect("write");
    let shellcheck = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(&path)
        .output()
        .expect("shellcheck is installed (scripts/setup)");
    assert!(
        shellcheck.status.success(),
        "{}",
        String::from_utf8_lossy(&shellcheck.stdout)
    );

    let rootfs = t.join("rootfs");
    let calls = t.join("systemctl-calls");
    let systemctl = t.join("systemctl");
    std::fs::write(
        &systemctl,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .expect("fake systemctl");
    Command::new("chmod")
        .arg("755")
        .arg(&systemctl)
        .status()
        .expect("chmod");
    let run = Command::new("sh")
        .arg(&path)
        .env("SK_ROOTFS", &rootfs)
        .env("SK_STATE_DIR", "/var/lib/spotkeeper")
        .env("SK_SYSTEMCTL", &systemctl)
        .output()
        .expect("run the boot script");
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/spotkeeper/on-interruption")).expect("hook file"),
        hook
    );
    assert_eq!(
        std::fs::read_to_string(&calls).expect("systemctl ran"),
        "daemon-reload\nenable --now spotkeeper-agent.service\n"
    );
    let unit = std::fs::read_to_string(rootfs.join("etc/systemd/system/spotkeeper-agent.service"))
        .expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec,
        "/usr/local/bin/spotkeeper agent --on-interruption-file /etc/spotkeeper/on-interruption \
         --timeout 45s --done-file /var/lib/spotkeeper/agent-done"
    );

    // systemd accepts the unit, and the binary its command line.
    let bin = env!("CARGO_BIN_EXE_spotkeeper");
    let verify = t.join("spotkeeper-agent.service");
    std::fs::write(&verify, unit.replace("/usr/local/bin/spotkeeper", bin)).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&verify)
        .output()
        .expect("systemd-analyze is installed (scripts/setup)");
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let help = Command::new(bin)
        .args(&args)
        .arg("--help")
        .output()
        .expect("run");
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );
}
