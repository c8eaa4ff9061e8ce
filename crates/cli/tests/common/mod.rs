//! Shared harness of the CLI tests: an emulator, a config file and a state
//! directory per test, and the `spotkeeper` binary run against them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spotkeeper_testkit::Moto;

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
}

impl Cli {
    pub fn new() -> Self {
        Self::with_config(CONFIG)
    }

    pub fn with_config(config: &str) -> Self {
        let cli = Self {
            moto: Moto::start(),
            dir: tempfile::tempdir().expect("tempdir"),
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotkeeper"));
        self.moto.configure(&mut cmd);
        cmd.env_remove("SPOTKEEPER_CONFIG")
            .env("SPOTKEEPER_STATE", self.dir.path().join("state/state.db"))
            .arg("--config")
            .arg(self.config_path())
            .args(args);
        cmd
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
        let log = cli.dir.path().join("serve.log");
        let child = cli
            .command(&["serve"])
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
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
