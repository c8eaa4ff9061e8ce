//! Test support: starts the AWS emulator (moto, through `scripts/moto_server.py`)
//! on a free loopback port, hands out the environment that points the AWS SDK
//! (and the `spotkeeper` binary) at it with dummy credentials, and stops it
//! when dropped. If moto is not installed the test fails, saying how to
//! install it; it never skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

/// The region every test uses.
pub const REGION: &str = "us-east-1";

/// The launcher script, from the source tree.
fn launcher() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/moto_server.py")
}

/// The Python that has moto: `$SPOTKEEPER_MOTO_PYTHON`, else the venv `scripts/setup` makes.
pub fn moto_python() -> PathBuf {
    if let Some(p) = std::env::var_os("SPOTKEEPER_MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("SPOTKEEPER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                })
                .join("spotkeeper")
        });
    cache.join("moto-venv/bin/python")
}

/// A running emulator. Dropping it stops the server.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    dir: tempfile::TempDir,
}

impl Moto {
    /// Starts a fresh emulator on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// When moto is not installed (with the command that installs it) or does not start.
    pub fn start() -> Self {
        let python = moto_python();
        if !python.exists() {
            panic!(
                "the AWS emulator is not installed: {} does not exist.\n\
                 Run `scripts/setup` (installs moto[server] into a venv), or set SPOTKEEPER_MOTO_PYTHON \
                 to a python that has moto[server].",
                python.display()
            );
        }
        let dir = tempfile::tempdir().expect("a temporary directory for the emulator");
        let mut child = Command::new(&python)
            .arg(launcher())
            .env("SPOTKEEPER_MOTO_CONTROL", dir.path().join("control.json"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let port = match (read, line.strip_prefix("READY ")) {
            (Ok(_), Some(p)) => p.trim().parse::<u16>().expect("the launcher prints a port"),
            _ => {
                let _ = child.kill();
                panic!(
                    "the AWS emulator did not start ({python:?} {:?}); it printed {line:?}. \
                     Is moto[server] installed? Run scripts/setup.",
                    launcher()
                );
            }
        };
        let moto = Self {
            child,
            _stdin: stdin,
            port,
            dir,
        };
        moto.wait_answering();
        moto
    }

    fn wait_answering(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the AWS emulator on 127.0.0.1:{} does not answer",
            self.port
        );
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Environment that points the AWS SDK at this emulator with dummy
    /// credentials, and away from any real account's files.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        // Empty files: no profile, no credentials, and nothing for aws-config to warn about.
        let nowhere = self.dir.path().join("empty-aws-file");
        if !nowhere.exists() {
            std::fs::write(&nowhere, "").expect("write an empty AWS config file");
        }
        let nowhere = nowhere.display().to_string();
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", nowhere.clone()),
            ("AWS_SHARED_CREDENTIALS_FILE", nowhere),
        ]
    }

    /// Applies [`Moto::env`] to a command and removes variables that would
    /// point it at a real account.
    pub fn configure<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env())
    }

    /// Sets the emulator's spot prices and capacity refusals; see
    /// `scripts/moto_server.py`. Keys are `"TYPE/ZONE"` or `"TYPE"`.
    pub fn set_market(&self, prices: &[(&str, Option<f64>)], no_capacity: &[&str]) {
        let prices: Vec<String> = prices
            .iter()
            .map(|(k, v)| {
                format!(
                    "{:?}: {}",
                    k,
                    v.map_or("null".to_owned(), |p| p.to_string())
                )
            })
            .collect();
        let refused: Vec<String> = no_capacity.iter().map(|k| format!("{k:?}")).collect();
        let json = format!(
            "{{\"prices\": {{{}}}, \"no_capacity\": [{}]}}",
            prices.join(", "),
            refused.join(", ")
        );
        let path = self.dir.path().join("control.json");
        let tmp = self.dir.path().join("control.json.tmp");
        std::fs::write(&tmp, json).expect("write the emulator control file");
        std::fs::rename(tmp, path).expect("install the emulator control file");
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}
