//! Test support: starts the AWS emulator (moto, through `scripts/moto_server.py`)
//! on a free loopback port, hands out the environment that points the AWS SDK
//! (and the `spotkeeper` binary) at it with dummy credentials, and stops it
//! when dropped. If moto is not installed the test fails, saying how to
//! install it; it never skips.

pub mod qemu;

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
    child: Child,
    _stdin: ChildStdin,
    port: u16,
    proxy_port: u16,
    dir: tempfile::TempDir,
    control: std::sync::Mutex<(String, String, String)>,
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
        let ports: Vec<u16> = line
            .strip_prefix("READY ")
            .map(|p| {
                p.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let (port, proxy_port) = match (read, ports.as_slice()) {
            (Ok(_), [p, q]) => (*p, *q),
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
        self.control.lock().unwrap_or_else(|e| e.into_inner()).2 =
            format!("{{\"terminating_for\": {}}}", how_long.as_secs_f64());
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that nothing listens on, for a server the test starts
/// later (a daemon's API, an sshd, a ready check's target).
///
/// A port the kernel hands out for `bind(0)` is taken from the ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default),
/// the same range every outgoing connection's local port comes from: between
/// the test releasing it and its server binding it, any client in any test
/// process may take it ("Address already in use"). So the port comes from
/// below that range, and a lock file held for the life of this process keeps
/// every other test process (nextest runs one per test) off it.
pub fn closed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let dir = std::env::temp_dir().join("spotkeeper-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock directory");
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..SPAN {
        let port = (LOW + (seed.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))) % SPAN) as u16;
        let Ok(lock) = std::fs::File::create(dir.join(port.to_string())) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
            return port;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

/// A real OpenSSH server on a loopback port, with throwaway host and user
/// keys, for tests of remote commands. Every session runs through a wrapper
/// that puts a fake `cloud-init` first on the PATH; its answer is set with
/// [`Sshd::set_cloud_init`]. Dropping it stops the server.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    port: u16,
    user: String,
    dir: tempfile::TempDir,
}

/// What the fake `cloud-init status --wait` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeCloudInit {
    /// `status: done`, exit 0.
    Done,
    /// `status: error`, exit 1.
    Error,
    /// `status: running` (exit 0) the first `n` times, then `status: done`.
    NotYet(u32),
}

fn sshd_binary() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("sshd is not installed: run scripts/setup (installs Debian's openssh-server)");
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts sshd on a free loopback port, accepting the current user with a fresh key.
    pub fn start() -> Self {
        let sshd = sshd_binary();
        let dir = tempfile::tempdir().expect("a temporary directory for sshd");
        let d = dir.path();
        let user = String::from_utf8(
            Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un")
                .stdout,
        )
        .expect("user name is UTF-8")
        .trim()
        .to_owned();
        for key in ["host_key", "user_key"] {
            run(Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "spotkeeper-test",
                    "-f",
                ])
                .arg(d.join(key)));
        }
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        std::fs::create_dir_all(d.join("bin")).expect("bin dir");
        let fake = format!(
            "#!/bin/sh\n# fake cloud-init: answers `status` from {0}/cloud-init.mode\n\
             echo \"$*\" >> {0}/cloud-init.calls\n\
             [ \"$1\" = status ] || exit 0\n\
             mode=$(cat {0}/cloud-init.mode 2>/dev/null || echo done)\n\
             case \"$mode\" in\n\
             done) echo 'status: done'; exit 0 ;;\n\
             error) echo 'status: error'; echo 'errors:'; echo \"  - ('scripts_user', RuntimeError('boom'))\"; exit 1 ;;\n\
             notyet:*) n=${{mode#notyet:}}; c=$(cat {0}/cloud-init.count 2>/dev/null || echo 0); c=$((c+1)); echo $c > {0}/cloud-init.count;\n\
               if [ \"$c\" -le \"$n\" ]; then echo 'status: running'; exit 0; else echo 'status: done'; exit 0; fi ;;\n\
             esac\n",
            d.display()
        );
        write_executable(&d.join("bin/cloud-init"), &fake);
        // File copies (scp, which speaks SFTP) reach the SFTP server through
        // the forced command too.
        let sftp = [
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/lib/ssh/sftp-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("/usr/lib/openssh/sftp-server");
        let wrapper = format!(
            "#!/bin/sh\nPATH={}/bin:$PATH\nexport PATH\n\
             case \"$SSH_ORIGINAL_COMMAND\" in sftp|internal-sftp|*/sftp-server) exec {sftp} ;; esac\n\
             exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\"\n",
            d.display()
        );
        write_executable(&d.join("wrapper"), &wrapper);
        let port = closed_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             AllowUsers {user}\nForceCommand {d}/wrapper\nSubsystem sftp {sftp}\nLogLevel ERROR\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
        // sshd refuses to start as root without its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(&sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", sshd.display()));
        let server = Self {
            child,
            port,
            user,
            dir,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("sshd on 127.0.0.1:{port} does not answer");
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user it accepts.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The private key it accepts.
    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("user_key")
    }

    /// A known_hosts file private to this server.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Puts a fake command first on the sessions' PATH: it records its
    /// arguments (see [`Sshd::calls`]) and runs `body`.
    pub fn fake_command(&self, name: &str, body: &str) {
        let d = self.dir.path();
        write_executable(
            &d.join("bin").join(name),
            &format!(
                "#!/bin/sh\necho \"$*\" >> {}/{name}.calls\n{body}\n",
                d.display()
            ),
        );
    }

    /// The argument lines a fake command (or `cloud-init`) was called with.
    pub fn calls(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.calls")))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Sets what the fake `cloud-init status` answers.
    pub fn set_cloud_init(&self, mode: FakeCloudInit) {
        let text = match mode {
            FakeCloudInit::Done => "done".to_owned(),
            FakeCloudInit::Error => "error".to_owned(),
            FakeCloudInit::NotYet(n) => format!("notyet:{n}"),
        };
        let _ = std::fs::remove_file(self.dir.path().join("cloud-init.count"));
        std::fs::write(self.dir.path().join("cloud-init.mode"), text)
            .expect("write cloud-init mode");
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
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
        let mut cmd = Command::new(moto_python());
        self.configure(&mut cmd);
        let out = cmd
            .arg("-c")
            .arg(format!("{prelude}{code}"))
            .output()
            .expect("run python with boto3");
        assert!(
            out.status.success(),
            "boto3 script failed:\n{code}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// How a [`Receiver`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200.
    Ok,
    /// 500.
    Fail,
    /// Reads the request and never answers (holds the connection).
    Hang,
}

/// One request a [`Receiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The status it answered (0 when it hung).
    pub status: u16,
    /// Request path.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Body.
    pub body: String,
}

#[derive(Debug)]
struct ReceiverState {
    answer: Answer,
    fail_first: usize,
    got: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1 (a thread per connection): answers as
/// told, after failing the first `fail_first` requests, and keeps what it got.
#[derive(Debug, Clone)]
pub struct Receiver {
    port: u16,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
}

impl Receiver {
    /// Starts one.
    pub fn start(answer: Answer, fail_first: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ReceiverState {
            answer,
            fail_first,
            got: Vec::new(),
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || Self::serve(conn, &state));
            }
        });
        Receiver { port, state }
    }

    fn serve(mut conn: std::net::TcpStream, state: &std::sync::Mutex<ReceiverState>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut reader = BufReader::new(conn.try_clone().expect("clone"));
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = std::collections::BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        let _ = reader.read_exact(&mut body);
        let answer = {
            let mut s = state.lock().expect("receiver state");
            let answer = if s.fail_first > 0 {
                s.fail_first -= 1;
                Answer::Fail
            } else {
                s.answer
            };
            s.got.push(Received {
                status: match answer {
                    Answer::Ok => 200,
                    Answer::Fail => 500,
                    Answer::Hang => 0,
                },
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            answer
        };
        let status = match answer {
            Answer::Ok => "200 OK",
            Answer::Fail => "500 Internal Server Error",
            Answer::Hang => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                return;
            }
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Answers from now on.
    pub fn set_answer(&self, answer: Answer) {
        self.state.lock().expect("receiver state").answer = answer;
    }

    /// Everything it got so far.
    pub fn got(&self) -> Vec<Received> {
        self.state.lock().expect("receiver state").got.clone()
    }

    /// Waits up to `within` until `done(got)` holds; panics with what it got otherwise.
    pub fn wait_for(
        &self,
        within: std::time::Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let got = self.got();
            if done(&got) {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "receiver on port {}: {what} did not happen within {within:?}; got {got:#?}",
                self.port
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// A throwaway PostgreSQL server from Debian's `postgresql` packages:
/// `initdb` into a temporary directory, listening on a Unix socket in it
/// (no TCP port at all), trust authentication, durability off (it is thrown
/// away). Run as the `postgres` user when the test runs as root (PostgreSQL
/// refuses root). Dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct Postgres {
    child: Child,
    dir: tempfile::TempDir,
}

/// The directory of PostgreSQL's server programs: `$SPOTKEEPER_PG_BIN`, else
/// the newest `/usr/lib/postgresql/*/bin`.
fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SPOTKEEPER_PG_BIN") {
        return PathBuf::from(p);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).unwrap_or_else(|| {
        panic!("PostgreSQL is not installed: run scripts/setup (installs Debian's postgresql)")
    })
}

impl Postgres {
    /// Initialises and starts a server; returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Postgres::start`] with server settings (`"max_connections=120"`)
    /// over the defaults.
    pub fn start_with(settings: &[&str]) -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("skpg")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        let d = dir.path();
        let as_postgres = |program: &str| {
            let mut c = if is_root() {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                    .arg(bin.join(program));
                c
            } else {
                Command::new(bin.join(program))
            };
            c.env("LC_ALL", "C");
            c
        };
        if is_root() {
            run(Command::new("chown").arg("postgres:").arg(d));
        }
        run(as_postgres("initdb")
            .args([
                "-U",
                "spotkeeper",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(d.join("data"))
            .stdout(Stdio::null()));
        let child = as_postgres("postgres")
            .arg("-D")
            .arg(d.join("data"))
            .arg("-k")
            .arg(d)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
            ])
            .args(settings.iter().flat_map(|s| ["-c", s]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("server.log")).expect("server log"),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL from {}: {e}", bin.display()));
        let server = Self { child, dir };
        // postmaster.pid's status line says `ready` once it accepts connections.
        for _ in 0..400 {
            let pid = std::fs::read_to_string(server.dir.path().join("data/postmaster.pid"));
            if pid.is_ok_and(|p| p.lines().nth(7).is_some_and(|l| l.trim() == "ready")) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// The URL of its `postgres` database (user `spotkeeper`, over the socket).
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `db` on it.
    pub fn url_of(&self, db: &str) -> String {
        format!(
            "postgres://spotkeeper@localhost/{db}?host={}",
            self.dir.path().display()
        )
    }

    /// Runs `sql` with psql on the `postgres` database; returns what it printed
    /// (unaligned, tuples only).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(pg_bin().join("psql"))
            .args([
                "-U",
                "spotkeeper",
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
            ])
            .arg(self.dir.path())
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// The variable `scripts/test` sets, in its PostgreSQL pass, to the URL of a
/// throwaway server (started by the `with-postgres` program).
pub const TEST_DATABASE_VAR: &str = "SPOTKEEPER_TEST_DATABASE_URL";

/// In the PostgreSQL pass (`$SPOTKEEPER_TEST_DATABASE_URL` set): a fresh
/// database on that server for this test, its URL. `None` otherwise (the
/// test runs on SQLite).
pub fn test_database() -> Option<String> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let admin = std::env::var(TEST_DATABASE_VAR)
        .ok()
        .filter(|u| !u.is_empty())?;
    let name = format!(
        "sk_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    run(Command::new(pg_bin().join("psql"))
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-d", &admin, "-c"])
        .arg(format!("CREATE DATABASE {name}")));
    Some(with_database(&admin, &name))
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown (the data is thrown away).
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
