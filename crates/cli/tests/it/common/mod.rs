//! Shared harness of the CLI tests: an emulator, a config file and a state
//! directory per test, and the `spotkeeper` binary run against them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use spotkeeper_testkit::{Moto, Sshd};

pub const CONFIG: &str = r#"
owner = "clitest"

[aws]
region = "us-east-1"

[box.dev]
image = "ami-0123456789abcdef0"
instance_types = ["t3.micro", "t3a.micro"]
max_price = 0.02
zones = ["us-east-1a", "us-east-1b"]
tags = { team = "ml" }
ready = { check = "none" }
"#;

pub struct Cli {
    pub moto: Moto,
    pub dir: tempfile::TempDir,
    /// In `scripts/test`'s PostgreSQL pass: this test's database, which
    /// every command is pointed at (`$SPOTKEEPER_DATABASE_URL`).
    pub database: Option<String>,
}

impl Cli {
    pub fn new() -> Self {
        Self::with_config(CONFIG)
    }

    pub fn with_config(config: &str) -> Self {
        let cli = Self {
            moto: Moto::start(),
            dir: tempfile::tempdir().expect("tempdir"),
            database: spotkeeper_testkit::test_database(),
        };
        cli.write_config(config);
        cli
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("spotkeeper.toml")
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_as(
            &self.config_path(),
            &self.dir.path().join("state/state.db"),
            args,
        )
    }

    /// A command as run on another machine: its own config file and state
    /// file (the database, if any, is the same).
    pub fn command_as(
        &self,
        config: &std::path::Path,
        state: &std::path::Path,
        args: &[&str],
    ) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotkeeper"));
        self.moto.configure(&mut cmd);
        match &self.database {
            Some(url) => cmd.env("SPOTKEEPER_DATABASE_URL", url),
            None => cmd.env_remove("SPOTKEEPER_DATABASE_URL"),
        };
        cmd.env_remove("SPOTKEEPER_CONFIG")
            .env_remove("SPOTKEEPER_DAEMON_ID")
            .env("SPOTKEEPER_STATE", state)
            .arg("--config")
            .arg(config)
            .args(args);
        cmd
    }

    /// Rows of `sql` run on this test's state (the SQLite file, or its
    /// PostgreSQL database), every value as text.
    pub fn state_rows(&self, sql: &str) -> Vec<Vec<String>> {
        let out = match &self.database {
            Some(url) => Command::new("psql")
                .args(["-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
                .output(),
            None => Command::new(spotkeeper_testkit::moto_python())
                .args([
                    "-c",
                    "import sqlite3, sys\nfor r in sqlite3.connect(sys.argv[1]).execute(sys.argv[2]):\n    print('\\t'.join(str(v) for v in r))",
                ])
                .arg(self.dir.path().join("state/state.db"))
                .arg(sql)
                .output(),
        }
        .expect("read the state");
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run spotkeeper")
    }

    pub fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "spotkeeper {args:?} failed: {}",
            describe(&out)
        );
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", describe(&out)))
    }

    pub fn live(&self) -> Vec<Value> {
        self.json(&["list", "--json"])
            .as_array()
            .expect("array")
            .clone()
    }
}

/// A box's `ssh` settings (a TOML inline table) that reach `sshd` on
/// loopback instead of the instance's address.
pub fn ssh_to(sshd: &Sshd) -> String {
    format!(
        "{{ user = \"{}\", key_file = \"{}\", port = {}, host = \"127.0.0.1\", known_hosts = \"{}\" }}",
        sshd.user(),
        sshd.key_file().display(),
        sshd.port(),
        sshd.known_hosts().display()
    )
}

/// The time now, in Unix seconds (as the emulator's proxy records calls).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

impl Cli {
    /// Arrival times at the emulator's proxy of `action` calls made at or
    /// after `since` (Unix seconds).
    pub fn proxy_calls(&self, action: &str, since: f64) -> Vec<f64> {
        let stats: Value = serde_json::from_str(&self.moto.proxy_stats()).expect("proxy stats");
        stats["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter(|c| c[2] == action)
            .filter_map(|c| c[0].as_f64())
            .filter(|t| *t >= since)
            .collect()
    }
}

pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `spotkeeper serve` child process; killed when dropped.
pub struct Serve {
    pub child: Child,
    log: std::path::PathBuf,
}

impl Serve {
    pub fn start(cli: &Cli) -> Self {
        Self::spawn(cli.command(&["serve"]), cli.dir.path().join("serve.log"))
    }

    /// `serve` from `cmd`, logging to `log`.
    pub fn spawn(mut cmd: Command, log: std::path::PathBuf) -> Self {
        let child = cmd
            // Tests read what the daemon did from its log (scripts/test sets
            // RUST_LOG=warn for everything else).
            .env("RUST_LOG", "warn,spotkeeper=info,spotkeeper_engine=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start serve");
        Serve { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let log = self.log.clone();
        spotkeeper_testkit::eventually(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || self.child.try_wait().expect("wait"),
            || {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                format!("serve did not stop on SIGTERM:\n{log}")
            },
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// `GET path` on the daemon's API at 127.0.0.1:`port` (with `token` when
/// given); the whole response, or the error if it did not answer within 5 s.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Result<String, String> {
    http(port, "GET", path, token)
}

/// `method path` (no body) on the daemon's API at 127.0.0.1:`port`, as
/// [`http_get`].
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> Result<String, String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(response)
}

/// Reconcile passes the daemon on API port `port` has finished (`ok`, `failed`).
pub fn passes(port: u16) -> (u64, u64) {
    let metrics = http_get(port, "/metrics", None).unwrap_or_default();
    let count = |kind: &str| {
        sample(
            &metrics,
            &format!("spotkeeper_reconcile_passes_total{{kind=\"{kind}\"}}"),
        ) as u64
    };
    (count("ok"), count("failed"))
}

/// The sample `name` (with its labels, as printed) of the daemon's metrics
/// at API port `port`; 0 when absent.
pub fn metric(port: u16, name: &str) -> f64 {
    sample(&http_get(port, "/metrics", None).unwrap_or_default(), name)
}

/// The value of sample `name` in Prometheus text `metrics`; 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the daemon on API port `port` has finished `n` more
/// successful passes than now: "nothing happened" is asserted after the
/// daemon looked, not after a guessed sleep.
pub fn wait_passes(port: u16, n: u64, serve: &Serve) {
    let target = passes(port).0 + n;
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            if passes(port).0 < target {
                None
            } else {
                Some(())
            }
        },
        || {
            format!(
                "the daemon did not finish {n} more passes within 60 s\n{}",
                serve.log()
            )
        },
    );
}

/// What [`demand_server`] answers: a pool's pending jobs, or a failure.
#[derive(Clone, Debug)]
pub enum Demand {
    Jobs(usize),
    Status500,
    Garbage,
}

/// A tiny HTTP server on 127.0.0.1 answering every GET with `answer`.
pub fn demand_server(answer: std::sync::Arc<std::sync::Mutex<Demand>>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match std::io::Read::read(&mut stream, &mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let now = answer.lock().expect("lock").clone();
            let (status, body) = match now {
                Demand::Jobs(n) => {
                    let jobs: Vec<String> = (0..n).map(|i| format!("{{\"id\":{i}}}")).collect();
                    ("200 OK", format!("[{}]", jobs.join(",")))
                }
                Demand::Status500 => ("500 Internal Server Error", "oops".to_owned()),
                Demand::Garbage => ("200 OK", "<html>not json</html>".to_owned()),
            };
            let _ = std::io::Write::write_fmt(
                &mut stream,
                format_args!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                ),
            );
        }
    });
    port
}
