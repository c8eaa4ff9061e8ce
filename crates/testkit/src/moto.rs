//! The AWS emulator (moto, through `scripts/moto_server.py`) and its
//! fault-injecting proxy.

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

/// A running emulator, with its fault-injecting proxy in front (see
/// `scripts/moto_server.py`). Dropping it stops both.
#[derive(Debug)]
pub struct Moto {
    process: Process,
    port: u16,
    proxy_port: u16,
    dir: tempfile::TempDir,
    control: std::sync::Mutex<(String, String, String)>,
}

/// The emulator's process: forked by the zygote (living as long as the
/// stream to it is open) or started here.
#[derive(Debug)]
enum Process {
    Forked(std::os::unix::net::UnixStream),
    Spawned {
        child: Child,
        /// Held open: the emulator leaves when its stdin closes.
        _stdin: ChildStdin,
    },
}

/// What the proxy does to the calls of `services` that pass through it.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Seed of the proxy's random draws: the same seed, the same faults.
    pub seed: u64,
    /// Share of calls answered 503 `RequestLimitExceeded`.
    pub throttle: f64,
    /// Share of calls answered 500 `InternalError`.
    pub fail: f64,
    /// Share of mutating calls that take effect and lose their answer.
    pub lose: f64,
    /// Accept calls and answer none.
    pub hang: bool,
    /// Signing names of the services affected (default `ec2`).
    pub services: Vec<&'static str>,
    /// AWS's eventual consistency: for this long after it was made, a new
    /// instance or volume is not found by id and left out of listings.
    pub lag: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            seed: 1,
            throttle: 0.0,
            fail: 0.0,
            lose: 0.0,
            hang: false,
            services: vec!["ec2"],
            lag: Duration::ZERO,
        }
    }
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
        let control = dir.path().join("control.json");
        let disks = dir.path().join("disks");
        let request = serde_json::json!({"serve": {"control": control, "disks": disks}});
        let (process, port, proxy_port) = match crate::zygote::ask(&python, &launcher(), &request) {
            Some((stream, line)) => match ports(&line).as_slice() {
                [p, q, ..] => (Process::Forked(stream), *p, *q),
                _ => panic!("the emulator's zygote answered {line:?}"),
            },
            None => spawn(&python, &control, &disks),
        };
        let moto = Self {
            process,
            port,
            proxy_port,
            dir,
            control: std::sync::Mutex::new(("{}".into(), "{}".into(), "{}".into())),
        };
        moto.wait_answering();
        moto
    }

    fn wait_answering(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.proxy_port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the AWS emulator on 127.0.0.1:{} does not answer",
            self.port
        );
    }

    /// The contents of volume (or snapshot) `id`: a directory the emulator
    /// copies along with snapshots, their copies and the volumes made from
    /// them (created on first use).
    pub fn disk(&self, id: &str) -> PathBuf {
        let path = self.dir.path().join("disks").join(id);
        std::fs::create_dir_all(&path).expect("a volume's directory in the emulator");
        path
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` of the fault-injecting proxy in front of the
    /// emulator: point a client here to have its calls throttled, failed,
    /// lost or hung as [`Moto::set_faults`] says.
    pub fn proxy_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    /// Sets what the proxy does from now on.
    pub fn set_faults(&self, f: &Faults) {
        let services: Vec<String> = f.services.iter().map(|s| format!("{s:?}")).collect();
        let json = format!(
            "{{\"seed\": {}, \"throttle\": {}, \"fail\": {}, \"lose\": {}, \"hang\": {}, \"lag\": {}, \"services\": [{}]}}",
            f.seed,
            f.throttle,
            f.fail,
            f.lose,
            f.hang,
            f.lag.as_secs_f64(),
            services.join(", ")
        );
        self.control.lock().unwrap_or_else(|e| e.into_inner()).1 = json;
        self.write_control();
    }

    /// What the proxy did so far, as JSON: counts of `requests`,
    /// `throttled`, `failed`, `lost`, `replayed`, `mismatched`, `hung`,
    /// `hidden` (describes answered NotFound for a new resource), and
    /// `calls`, `[unix time, service, action]` per call in arrival order.
    pub fn proxy_stats(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.proxy_port))
            .expect("connect to the proxy");
        s.write_all(b"GET /__proxy/stats HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n")
            .expect("ask the proxy");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the proxy's answer");
        out.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Makes TerminateInstances take `how_long`, as on AWS: the instances
    /// stay `shutting-down` with their volumes attached, then are
    /// `terminated`. Zero (the default) terminates at once, as moto does.
    pub fn set_terminating_for(&self, how_long: Duration) {
        self.set_ec2("terminating_for", how_long);
    }

    /// Makes a snapshot CopySnapshot made stay `pending` for `how_long`, as
    /// on AWS (a copy across regions completes later). Zero (the default)
    /// completes it at once, as moto does.
    pub fn set_copying_for(&self, how_long: Duration) {
        self.set_ec2("copying_for", how_long);
    }

    fn set_ec2(&self, key: &str, how_long: Duration) {
        {
            let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
            let mut ec2: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&control.2).unwrap_or_default();
            ec2.insert(key.to_owned(), serde_json::json!(how_long.as_secs_f64()));
            control.2 = serde_json::Value::Object(ec2).to_string();
        }
        self.write_control();
    }

    fn write_control(&self) {
        let (market, faults, ec2) = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let json = format!("{{\"market\": {market}, \"faults\": {faults}, \"ec2\": {ec2}}}");
        let path = self.dir.path().join("control.json");
        let tmp = self.dir.path().join("control.json.tmp");
        std::fs::write(&tmp, json).expect("write the emulator control file");
        std::fs::rename(tmp, path).expect("install the emulator control file");
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
        self.set_market_with(prices, no_capacity, &[], false);
    }

    /// [`Moto::set_market`], with the placement scores GetSpotPlacementScores
    /// answers (by zone name), or its refusal (an account past its daily
    /// number of distinct configurations).
    pub fn set_market_with(
        &self,
        prices: &[(&str, Option<f64>)],
        no_capacity: &[&str],
        scores: &[(&str, u8)],
        scores_refused: bool,
    ) {
        let scores: Vec<String> = scores.iter().map(|(z, s)| format!("{z:?}: {s}")).collect();
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
            "{{\"prices\": {{{}}}, \"no_capacity\": [{}], \"scores\": {{{}}}, \"scores_refused\": {scores_refused}}}",
            prices.join(", "),
            refused.join(", "),
            scores.join(", ")
        );
        self.control.lock().unwrap_or_else(|e| e.into_inner()).0 = json;
        self.write_control();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        match &mut self.process {
            // The fork leaves when its stream closes.
            Process::Forked(stream) => {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            Process::Spawned { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The ports of a `READY PORT PROXY_PORT [PID]` line.
fn ports(line: &str) -> Vec<u16> {
    line.strip_prefix("READY ")
        .map(|p| {
            p.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `scripts/moto_server.py` as a process of this test's own.
fn spawn(python: &Path, control: &Path, disks: &Path) -> (Process, u16, u16) {
    let mut child = Command::new(python)
        .arg(launcher())
        .env("SPOTKEEPER_MOTO_CONTROL", control)
        .env("SPOTKEEPER_MOTO_DISKS", disks)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut line = String::new();
    let read = BufReader::new(stdout).read_line(&mut line);
    match (read, ports(&line).as_slice()) {
        (Ok(_), [p, q]) => (
            Process::Spawned {
                child,
                _stdin: stdin,
            },
            *p,
            *q,
        ),
        _ => {
            let _ = child.kill();
            panic!(
                "the AWS emulator did not start ({python:?} {:?}); it printed {line:?}. \
                 Is moto[server] installed? Run scripts/setup.",
                launcher()
            );
        }
    }
}

impl Moto {
    /// Runs Python `code` with boto3 (moto's dependency) pointed at this
    /// emulator, for test set-up and inspection beyond spotkeeper's own calls.
    /// `ec2`, `r53` and `json` are already defined; print results as JSON.
    ///
    /// # Panics
    /// When the code fails.
    pub fn boto(&self, code: &str) -> String {
        let prelude = "import boto3, json, os\n\
            kw = dict(region_name=os.environ['AWS_REGION'], endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n\
            ec2 = boto3.client('ec2', **kw)\nr53 = boto3.client('route53', **kw)\n";
        let script = format!("{prelude}{code}");
        let env: serde_json::Map<String, serde_json::Value> = self
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let request = serde_json::json!({"run": {"code": script, "env": env}});
        let (status, stdout, stderr) =
            match crate::zygote::ask(&moto_python(), &launcher(), &request) {
                Some((_, line)) => {
                    let answer: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("the zygote answered {line:?}: {e}"));
                    let text = |k: &str| answer[k].as_str().unwrap_or_default().to_owned();
                    (answer["status"].as_i64(), text("stdout"), text("stderr"))
                }
                None => {
                    let mut cmd = Command::new(moto_python());
                    self.configure(&mut cmd);
                    let out = cmd
                        .arg("-c")
                        .arg(&script)
                        .output()
                        .expect("run python with boto3");
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    (
                        out.status.code().map(i64::from),
                        text(&out.stdout),
                        text(&out.stderr),
                    )
                }
            };
        assert!(status == Some(0), "boto3 script failed:\n{code}\n{stderr}");
        stdout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Emulators forked by the zygote are copies of their own: what a test
    /// makes in one, another does not see, their ids are drawn apart, and
    /// one leaves when its test drops it.
    #[test]
    fn forked_emulators_are_apart_and_leave_with_their_test() {
        let (a, b) = (Moto::start(), Moto::start());
        assert!(matches!(a.process, Process::Forked(_)), "{a:?}");
        let vpc = |m: &Moto| {
            m.boto("print(json.dumps(ec2.create_vpc(CidrBlock='10.9.0.0/16')['Vpc']['VpcId']))")
        };
        let (in_a, in_b) = (vpc(&a), vpc(&b));
        assert_ne!(in_a, in_b, "the same id drawn in two emulators");
        let listed = b.boto("print(json.dumps([v['VpcId'] for v in ec2.describe_vpcs()['Vpcs']]))");
        assert!(!listed.contains(in_a.trim()), "{listed} holds {in_a}");
        let port = a.port();
        drop(a);
        crate::eventually(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_err()
                    .then_some(())
            },
            || format!("the dropped emulator still answers on {port}"),
        );
    }
}
