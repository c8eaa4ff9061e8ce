//! Benchmark: how fast `spotkeeper serve` answers spot interruption
//! warnings, against the emulator, every AWS call of the daemon going
//! through the testkit's proxy, which records when each call arrives (the
//! moment the SDK sent it). Two figures:
//!
//! 1. the fast path: a warning sent to the queue → the replacement's
//!    `RunInstances` at the proxy, median and p95 over 20 rounds (a box
//!    without a volume, then one with a data volume);
//! 2. a wave: 20 boxes, each with a 5 s ready check, warned at once → when
//!    the 1st, 10th and 20th replacement `RunInstances` left, and when all
//!    20 ran again.
//!
//! Not a test: nothing is asserted but that the daemon got there.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use spotkeeper_testkit::{Moto, closed_port};

const ROUNDS: usize = 20;
const WAVE: usize = 20;

struct Bench {
    moto: Moto,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        Self {
            moto: Moto::start(),
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    fn config(&self, boxes: &str) {
        std::fs::write(
            self.dir.path().join("spotkeeper.toml"),
            format!(
                "owner = \"bench\"\n[daemon]\ninterval = \"30s\"\n[api]\nlisten = \"127.0.0.1:{}\"\ntoken = \"bench-token-0123456789\"\n\
                 [aws]\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n{boxes}",
                closed_port(),
                self.moto.proxy_endpoint()
            ),
        )
        .expect("config");
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spotkeeper"));
        self.moto.configure(&mut cmd);
        cmd.env("SPOTKEEPER_STATE", self.dir.path().join("state.db"))
            .env("RUST_LOG", "warn")
            .arg("--config")
            .arg(self.dir.path().join("spotkeeper.toml"))
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `serve`, logging spotkeeper's debug lines (when a message was
    /// received, when the launch call was made) to `serve.log`.
    fn serve(&self) -> Child {
        let log = std::fs::File::create(self.dir.path().join("serve.log")).expect("log file");
        self.command(&["serve"])
            .env("RUST_LOG", "warn,spotkeeper_engine=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("serve")
    }

    /// From serve's log: for each message received, the time to the next
    /// launch call at the `Cloud` boundary (the SDK call starts there), ms.
    fn receive_to_launch(&self) -> Vec<f64> {
        let text = std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default();
        let time = |line: &str| -> Option<std::time::SystemTime> {
            let plain: String = strip_ansi(line);
            humantime::parse_rfc3339(plain.split_whitespace().next()?).ok()
        };
        let mut out = Vec::new();
        let mut received = None;
        for line in text.lines() {
            if line.contains(" received ") && received.is_none() {
                received = time(line);
            } else if line.contains("launch call")
                && let (Some(r), Some(l)) = (received.take(), time(line))
            {
                out.push(l.duration_since(r).unwrap_or_default().as_secs_f64() * 1000.0);
            }
        }
        out
    }

    /// Live instance ids of box `name`.
    fn live(&self, name: &str) -> Vec<String> {
        let out = self.moto.boto(&format!(
            "r = ec2.describe_instances(Filters=[{{'Name': 'tag:spotkeeper:box', 'Values': ['{name}']}}, {{'Name': 'instance-state-name', 'Values': ['pending', 'running']}}])['Reservations']\n\
             print(','.join(i['InstanceId'] for x in r for i in x['Instances']))"
        ));
        out.trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Sends a warning for each instance, and terminates them in the same
    /// script when `terminate` says so; returns the unix times right before
    /// the first message was sent and right after the last (ten go in one
    /// call: with many, the daemon launches before the last is in).
    fn warn(&self, instances: &[String], round: &str, terminate: bool) -> (f64, f64) {
        let warning = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../engine/fixtures/events/spot-interruption-warning.json"
        ))
        .expect("fixture");
        let bodies: Vec<String> = instances
            .iter()
            .enumerate()
            .map(|(n, id)| {
                warning.replace("i-1234567890abcdef0", id).replace(
                    "12345678-1234-1234-1234-123456789012",
                    &format!("{round}-{n}"),
                )
            })
            .collect();
        let out = self.moto.boto(&format!(
            "import time\nsqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-bench-events')['QueueUrl']\n\
             bodies = json.loads({})\nids = json.loads({})\nt0 = time.time()\n\
             for i in range(0, len(bodies), 10):\n    sqs.send_message_batch(QueueUrl=u, Entries=[{{'Id': str(n), 'MessageBody': b}} for n, b in enumerate(bodies[i:i+10])])\n\
             t = time.time()\nif {}:\n    ec2.terminate_instances(InstanceIds=ids)\nprint(t0, t)",
            serde_json::to_string(&serde_json::to_string(&bodies).expect("json")).expect("quoted"),
            serde_json::to_string(&serde_json::to_string(instances).expect("json")).expect("quoted"),
            if terminate { "True" } else { "False" },
        ));
        let times: Vec<f64> = out
            .split_whitespace()
            .map(|t| t.parse().expect("a time"))
            .collect();
        (times[0], times[1])
    }

    /// The floor of the fast path here: a long-poll receive through the
    /// proxy (as the daemon's) returns this long after a send on the same
    /// emulator (ms, sorted; boto3 on both ends).
    fn bare_receives(&self, rounds: usize) -> Vec<f64> {
        let out = self.moto.boto(&format!(
            "import threading, time\n\
             px = dict(kw, endpoint_url='{}')\n\
             u = boto3.client('sqs', **kw).create_queue(QueueName='spotkeeper-bench-floor')['QueueUrl']\n\
             rx, tx = boto3.client('sqs', **px), boto3.client('sqs', **kw)\n\
             took = []\n\
             for _ in range({rounds}):\n\
             \x20   got = {{}}\n\
             \x20   def receive():\n\
             \x20       r = rx.receive_message(QueueUrl=u, WaitTimeSeconds=20, MaxNumberOfMessages=10)\n\
             \x20       got['at'] = time.time()\n\
             \x20       for m in r.get('Messages', []):\n\
             \x20           tx.delete_message(QueueUrl=u, ReceiptHandle=m['ReceiptHandle'])\n\
             \x20   th = threading.Thread(target=receive)\n\
             \x20   th.start()\n\
             \x20   time.sleep(0.3)\n\
             \x20   tx.send_message(QueueUrl=u, MessageBody='x')\n\
             \x20   sent = time.time()\n\
             \x20   th.join()\n\
             \x20   took.append((got['at'] - sent) * 1000)\n\
             print(' '.join(str(t) for t in took))",
            self.moto.proxy_endpoint()
        ));
        let mut took: Vec<f64> = out
            .split_whitespace()
            .map(|t| t.parse().expect("ms"))
            .collect();
        took.sort_by(f64::total_cmp);
        took
    }

    /// Arrival times (unix) of RunInstances calls at the proxy after `since`.
    fn launches_after(&self, since: f64) -> Vec<f64> {
        let stats: Value = serde_json::from_str(&self.moto.proxy_stats()).expect("stats");
        stats["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .filter(|c| c[2] == "RunInstances")
            .filter_map(|c| c[0].as_f64())
            .filter(|t| *t >= since)
            .collect()
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (warning sent → RunInstances at the proxy, message received → launch
/// call in the daemon, the floor: a bare receive after a send), ms, sorted.
fn fast_path(volume: bool, rounds: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let b = Bench::new();
    let extra = if volume {
        "data_volume = { name = \"dev-data\", size_gb = 5 }\n"
    } else {
        ""
    };
    b.config(&format!(
        "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\nmax_price = 0.02\n\
         ready = {{ check = \"none\" }}\n{extra}"
    ));
    b.run(&["setup"]);
    b.run(&["up", "dev"]);
    let floor = b.bare_receives(rounds);
    let mut serve = b.serve();
    // The start-up pass has observed (and settled) the box.
    std::thread::sleep(Duration::from_secs(3));
    let mut took = Vec::new();
    for round in 0..rounds {
        let old = b.live("dev");
        // AWS takes the instance two minutes after its warning: here once
        // the replacement is launched (not in the same breath as the
        // warning, which would load the emulator while it is measured).
        let (_, sent) = b.warn(&old, &format!("fast-{volume}-{round}"), false);
        let deadline = Instant::now() + Duration::from_secs(60);
        // The proxy is the emulator's process: asking it for its calls
        // while the launch is on its way would slow the calls measured.
        // Ask once the launch has most likely arrived, then every 20 ms.
        std::thread::sleep(Duration::from_millis(500));
        let launched = loop {
            if let Some(t) = b.launches_after(sent).first() {
                break *t;
            }
            assert!(Instant::now() < deadline, "round {round}: no launch");
            std::thread::sleep(Duration::from_millis(20));
        };
        took.push((launched - sent).max(0.0) * 1000.0);
        b.moto.boto(&format!(
            "ec2.terminate_instances(InstanceIds={})",
            serde_json::to_string(&old).expect("json")
        ));
        // Settled before the next round: one live instance, not the old one.
        loop {
            let now = b.live("dev");
            if now.len() == 1 && now != old {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: not replaced");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    took.sort_by(f64::total_cmp);
    // SPOTKEEPER_BENCH_LOG=FILE keeps the daemon's (debug) log.
    if let Ok(keep) = std::env::var("SPOTKEEPER_BENCH_LOG") {
        let _ = std::fs::copy(b.dir.path().join("serve.log"), keep);
    }
    let mut inside = b.receive_to_launch();
    inside.sort_by(f64::total_cmp);
    (took, inside, floor)
}

fn wave() -> (Vec<f64>, f64) {
    let b = Bench::new();
    let boxes = |ready: &str| {
        (0..WAVE)
            .map(|i| {
                format!(
                    "[box.b{i:02}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\nmax_price = 0.02\nready = {ready}\n"
                )
            })
            .collect::<String>()
    };
    b.config(&boxes("{ check = \"none\" }"));
    b.run(&["setup"]);
    for i in 0..WAVE {
        b.run(&["up", &format!("b{i:02}")]);
    }
    // From now on every replacement's ready check takes five seconds.
    b.config(&boxes(
        "{ check = \"command\", command = \"sleep 5\", timeout = \"1m\" }",
    ));
    let mut serve = b.serve();
    std::thread::sleep(Duration::from_secs(3));
    let old: Vec<String> = (0..WAVE)
        .flat_map(|i| b.live(&format!("b{i:02}")))
        .collect();
    // From the first warning: the first launches precede the last ones.
    let (sent, _) = b.warn(&old, "wave", true);
    let deadline = Instant::now() + Duration::from_secs(300);
    let launches = loop {
        let l = b.launches_after(sent);
        if l.len() >= WAVE {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "only {} launches: {l:?}",
            l.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let all_back = loop {
        let running = (0..WAVE)
            .filter(|i| {
                let now = b.live(&format!("b{i:02}"));
                now.len() == 1 && !old.contains(&now[0])
            })
            .count();
        if running == WAVE {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "only {running} replaced");
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let all_back_unix = now_unix - all_back.elapsed().as_secs_f64();
    let mut rel: Vec<f64> = launches.iter().map(|t| t - sent).collect();
    rel.sort_by(f64::total_cmp);
    (rel, all_back_unix - sent)
}

/// The cargo profile the daemon under test was built in: its binary's
/// directory (`target/bench-opt/spotkeeper`).
fn profile() -> String {
    std::path::Path::new(env!("CARGO_BIN_EXE_spotkeeper"))
        .parent()
        .and_then(|d| d.file_name())
        .map_or_else(|| "?".into(), |d| d.to_string_lossy().into_owned())
}

fn main() {
    let profile = profile();
    let built = match profile.as_str() {
        "debug" => "the dev profile: unoptimised",
        "bench-opt" => {
            "the bench-opt profile: -O1 but for the SDK's service crates, as optimised builds run it"
        }
        "release" => "the release profile",
        _ => "a profile of its own",
    };
    println!(
        "interruption benchmark against the emulator (daemon built in {built}; times at the proxy in front of it)"
    );
    // SPOTKEEPER_BENCH_ONLY=fast: the fast path without a volume only, 5
    // rounds; =wave: the wave only.
    if std::env::var("SPOTKEEPER_BENCH_ONLY").as_deref() == Ok("fast") {
        let (ms, inside, floor) = fast_path(false, 5);
        println!(
            "  fast path: sent → at the proxy {ms:?} ms; received → launch call {inside:?} ms; bare receive {floor:?} ms"
        );
        return;
    }
    let only_wave = std::env::var("SPOTKEEPER_BENCH_ONLY").as_deref() == Ok("wave");
    for volume in [false, true].into_iter().filter(|_| !only_wave) {
        let (ms, inside, floor) = fast_path(volume, ROUNDS);
        println!(
            "  fast path, box {}, {ROUNDS} rounds:",
            if volume {
                "with a data volume"
            } else {
                "without a volume"
            },
        );
        println!(
            "    message received → launch call (the daemon's own time, at the Cloud/SDK boundary): median {:.0} ms, p95 {:.0} ms (target < 50 ms)",
            percentile(&inside, 0.5),
            percentile(&inside, 0.95),
        );
        println!(
            "    warning sent to the queue → RunInstances at the proxy: median {:.0} ms, p99 {:.0} ms (goal: median <= 20 ms, p99 <= 40 ms)",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
        );
        println!(
            "    floor: a bare long-poll receive through the proxy returns {:.0} ms (median; p99 {:.0} ms) after a send, plus one request",
            percentile(&floor, 0.5),
            percentile(&floor, 0.99),
        );
    }
    let (launches, all_back) = wave();
    println!(
        "  wave: {WAVE} boxes with a 5 s ready check warned at once → RunInstances of the 1st {:.2} s, 10th {:.2} s, {WAVE}th {:.2} s after the first warning was sent (target: 20th < 3 s); all {WAVE} running again after {:.1} s",
        launches[0],
        launches[WAVE / 2 - 1],
        launches[WAVE - 1],
        all_back
    );
    println!(
        "  before (the sequential reconciler, issue #9): 12 boxes with a 4 s ready check, the 12th launched 52 s after the warnings; a warning reached RunInstances after 544 ms (median)"
    );
}
