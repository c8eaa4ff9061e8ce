//! Several daemons on one PostgreSQL (#14), against the emulator and a real
//! PostgreSQL server from Debian's packages (the testkit starts one per
//! test, on a Unix socket): each daemon is another "machine" (its own config
//! file, API port and state directory). Boxes and the pool are shared out by
//! leases; a wave of spot warnings, each delivered twice, is acted on once
//! per event; a daemon killed with SIGKILL mid-wave has its boxes taken over
//! once its leases expire; a CLI `up` racing a daemon yields one instance,
//! and an `up` waits for another machine's `up` of the same box (the lock is
//! in the database) and launches nothing; a warning read by the daemon that
//! does not hold the box still has its `on_interruption` hook run over SSH,
//! by the holder, before the volume is handed over.

use crate::common;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::{Cli, Demand, Serve, demand_server, describe, http_get, metric};
use serde_json::Value;
use spotkeeper_testkit::Postgres;

const TOKEN: &str = "shared-token-0123456789";
/// The database password in the URL every process is given.
const PASSWORD: &str = "pw-s3cr3t-0123";
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/fixtures/events");
/// `[daemon] lease`: short, so a takeover happens within the test.
const LEASE: Duration = Duration::from_secs(3);
/// `[daemon] interval`.
const INTERVAL: Duration = Duration::from_secs(1);

/// `boxes` boxes b00 … with a data volume each, and (with `pool`) pool
/// `workers` kept at two instances by its minimum.
fn config(api_port: u16, demand_port: u16, boxes: usize, pool: bool) -> String {
    let mut text = format!(
        "owner = \"shared\"\n\n[daemon]\ninterval = \"{}s\"\nlease = \"{}s\"\n\n\
         [api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"{TOKEN}\"\n\n[aws]\nregion = \"us-east-1\"\n",
        INTERVAL.as_secs(),
        LEASE.as_secs()
    );
    for i in 0..boxes {
        text.push_str(&format!(
            "\n[box.b{i:02}]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\n\
             max_price = 0.02\nzones = [\"us-east-1a\", \"us-east-1b\"]\nready = {{ check = \"none\" }}\n\
             data_volume = {{ name = \"b{i:02}-data\", size_gb = 1, on_stop = \"delete\" }}\n"
        ));
    }
    if pool {
        text.push_str(&format!(
            "\n[pool.workers]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\", capacity = 1 }} ]\n\
             zones = [\"us-east-1a\", \"us-east-1b\"]\nmin_capacity = 2\nmax_capacity = 4\njobs_per_capacity = 1\n\
             demand = {{ http = \"http://127.0.0.1:{demand_port}/jobs\", timeout = \"2s\" }}\n"
        ));
    }
    text
}

/// Two "machines" on one database: the test's CLI is machine `a`.
/// The logs of the daemons named, for a failure message.
fn logs_of(logs: &[&Serve]) -> String {
    logs.iter()
        .map(|s| s.log())
        .collect::<Vec<_>>()
        .join("\n----\n")
}

struct Shared {
    cli: Cli,
    pg: Postgres,
    boxes: usize,
    pool: bool,
}

impl Shared {
    fn new(boxes: usize, pool: bool) -> Self {
        Self::on(Postgres::start(), boxes, pool)
    }

    /// [`Shared::new`] on server `pg`.
    fn on(pg: Postgres, boxes: usize, pool: bool) -> Self {
        let demand = demand_server(std::sync::Arc::new(std::sync::Mutex::new(Demand::Jobs(0))));
        let mut cli = Cli::with_config(&config(
            spotkeeper_testkit::closed_port(),
            demand,
            boxes,
            pool,
        ));
        // Trust authentication takes any password: this one must show nowhere.
        cli.database = Some(
            pg.url()
                .replace("spotkeeper@", &format!("spotkeeper:{PASSWORD}@")),
        );
        cli.ok(&["setup"]);
        Self {
            cli,
            pg,
            boxes,
            pool,
        }
    }

    /// Machine `name`'s config file (its own API port) and state file.
    fn machine(&self, name: &str, api_port: u16) -> (PathBuf, PathBuf) {
        self.machine_with(name, api_port, "")
    }

    /// Machine `name`'s config file, with `aws` lines added to its `[aws]`.
    fn machine_with(&self, name: &str, api_port: u16, aws: &str) -> (PathBuf, PathBuf) {
        self.machine_configured(name, api_port, aws, "")
    }

    /// Machine `name`'s config file, with `aws` lines added to its `[aws]`
    /// and `daemon` lines to its `[daemon]`.
    fn machine_configured(
        &self,
        name: &str,
        api_port: u16,
        aws: &str,
        daemon: &str,
    ) -> (PathBuf, PathBuf) {
        let dir = self.cli.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("machine dir");
        let text = std::fs::read_to_string(self.cli.config_path())
            .expect("config")
            .replace("[aws]\n", &format!("[aws]\n{aws}"))
            .replace("[daemon]\n", &format!("[daemon]\n{daemon}"));
        let at = text.find("listen = ").expect("listen");
        let end = at + text[at..].find('\n').expect("line");
        let text = format!(
            "{}listen = \"127.0.0.1:{api_port}\"{}",
            &text[..at],
            &text[end..]
        );
        std::fs::write(dir.join("spotkeeper.toml"), text).expect("write config");
        (dir.join("spotkeeper.toml"), dir.join("state/state.db"))
    }

    /// `serve` on machine `name`; its API port.
    fn serve(&self, name: &str) -> (Serve, u16) {
        self.serve_with(name, "")
    }

    /// `serve` on machine `name` with `aws` lines in its `[aws]`.
    fn serve_with(&self, name: &str, aws: &str) -> (Serve, u16) {
        self.serve_configured(name, aws, "")
    }

    /// `serve` on machine `name` with `aws` lines in its `[aws]` and
    /// `daemon` lines in its `[daemon]`.
    fn serve_configured(&self, name: &str, aws: &str, daemon: &str) -> (Serve, u16) {
        let port = spotkeeper_testkit::closed_port();
        let (config, state) = self.machine_configured(name, port, aws, daemon);
        let serve = Serve::spawn(
            self.cli.command_as(&config, &state, &["serve"]),
            self.cli.dir.path().join(format!("{name}.log")),
        );
        spotkeeper_testkit::eventually(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                if http_get(port, "/healthz", None).is_err() {
                    None
                } else {
                    Some(())
                }
            },
            || format!("no API:\n{}", serve.log()),
        );
        (serve, port)
    }

    /// `up` of every box from machine `a`, four at a time.
    fn up_all(&self) {
        let names: Vec<String> = (0..self.boxes).map(|i| format!("b{i:02}")).collect();
        for chunk in names.chunks(4) {
            let children: Vec<_> = chunk
                .iter()
                .map(|n| {
                    self.cli
                        .command(&["up", n])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("up")
                })
                .collect();
            for c in children {
                let out = c.wait_with_output().expect("up ran");
                assert!(out.status.success(), "{}", describe(&out));
            }
        }
    }

    /// Every subject there should be.
    fn subjects(&self) -> Vec<String> {
        let mut s: Vec<String> = (0..self.boxes).map(|i| format!("box:b{i:02}")).collect();
        if self.pool {
            s.push("pool:workers".into());
        }
        s.push("fleet".into());
        s
    }

    /// Live leases (not expired): subject → holder.
    fn holders(&self) -> BTreeMap<String, String> {
        self.pg
            .psql(
                "SELECT subject, holder FROM leases WHERE owner = 'shared' \
                 AND expires_at >= (extract(epoch from now()) * 1000)::bigint",
            )
            .lines()
            .filter_map(|l| l.split_once('|'))
            .map(|(s, h)| (s.to_owned(), h.to_owned()))
            .collect()
    }

    /// Instances of each box in the emulator: box → [(id, state)], every
    /// state (moto keeps terminated ones).
    fn instances(&self) -> BTreeMap<String, Vec<(String, String)>> {
        let out = self.cli.moto.boto(
            "r = ec2.describe_instances(Filters=[{'Name': 'tag:spotkeeper:owner', 'Values': ['shared']}])['Reservations']\n\
             out = {}\n\
             for x in r:\n\
             \x20   for i in x['Instances']:\n\
             \x20       b = [t['Value'] for t in i.get('Tags', []) if t['Key'] == 'spotkeeper:box']\n\
             \x20       if b: out.setdefault(b[0], []).append([i['InstanceId'], i['State']['Name']])\n\
             print(json.dumps(out))",
        );
        serde_json::from_str(out.trim()).expect("json")
    }

    /// The live instances of each box (two for a moment while one is
    /// replaced: the old goes once the new runs).
    fn live_all(&self) -> BTreeMap<String, Vec<String>> {
        self.instances()
            .into_iter()
            .map(|(b, list)| {
                let live = list
                    .into_iter()
                    .filter(|(_, s)| s == "pending" || s == "running")
                    .map(|(id, _)| id)
                    .collect();
                (b, live)
            })
            .collect()
    }

    /// The live instance of each box that has exactly one.
    fn live(&self) -> BTreeMap<String, String> {
        self.live_all()
            .into_iter()
            .filter(|(_, l)| l.len() == 1)
            .map(|(b, l)| (b, l[0].clone()))
            .collect()
    }

    /// Checks the volumes: no volume attached twice, and one data volume
    /// per box (none made twice).
    fn check_volumes(&self) {
        let out = self.cli.moto.boto(
            "v = ec2.describe_volumes(Filters=[{'Name': 'tag:spotkeeper:owner', 'Values': ['shared']}])['Volumes']\n\
             print(json.dumps([[([t['Value'] for t in x.get('Tags', []) if t['Key'] == 'Name'] + [''])[0], x['VolumeId'],\
             [a['InstanceId'] for a in x.get('Attachments', []) if a['State'] in ('attaching', 'attached')]] for x in v]))",
        );
        let volumes: Vec<(String, String, Vec<String>)> =
            serde_json::from_str(out.trim()).expect("json");
        for (name, id, on) in &volumes {
            assert!(on.len() <= 1, "{name} {id} attached to {on:?}");
        }
        for i in 0..self.boxes {
            let name = format!("b{i:02}-data");
            let n = volumes.iter().filter(|(v, _, _)| *v == name).count();
            assert_eq!(n, 1, "{name}: {volumes:?}");
        }
    }

    /// Sends a spot warning for each `(instance, event id)`, each twice.
    fn wave(&self, warnings: &[(String, String)]) {
        self.wave_to("spotkeeper-shared-events", warnings);
    }

    /// [`Shared::wave`] into queue `queue`, the warnings issued now.
    fn wave_to(&self, queue: &str, warnings: &[(String, String)]) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let template =
            std::fs::read_to_string(format!("{FIXTURES}/spot-interruption-warning.json"))
                .expect("fixture")
                .replace("2026-11-02T09:59:19Z", &now);
        let bodies: Vec<String> = warnings
            .iter()
            .flat_map(|(instance, id)| {
                let body = template
                    .replace("i-1234567890abcdef0", instance)
                    .replace("12345678-1234-1234-1234-123456789012", id);
                [body.clone(), body]
            })
            .collect();
        self.cli.moto.boto(&format!(
            "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='{queue}')['QueueUrl']\n\
             for b in json.loads({}):\n    sqs.send_message(QueueUrl=u, MessageBody=b)",
            serde_json::to_string(&serde_json::to_string(&bodies).expect("json")).expect("quoted")
        ));
    }

    /// Waits until every box runs on an instance not in `old`.
    fn wait_all_replaced(
        &self,
        old: &BTreeMap<String, String>,
        logs: &[&Serve],
    ) -> BTreeMap<String, String> {
        spotkeeper_testkit::eventually(
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let live = self.live();
                (self.live_all().values().all(|l| l.len() <= 1)
                    && live.len() == self.boxes
                    && live.iter().all(|(b, id)| old.get(b) != Some(id)))
                .then_some(live)
            },
            || {
                format!(
                    "not every box was replaced: live {:?}, old {old:?}\n{}",
                    self.live_all(),
                    logs_of(logs)
                )
            },
        )
    }

    /// Waits until every subject has a live lease, with `want` holders
    /// among them; returns subject → holder.
    fn wait_shared(&self, want: usize, logs: &[&Serve]) -> BTreeMap<String, String> {
        let share = self.subjects().len().div_ceil(want);
        spotkeeper_testkit::eventually(
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let held = self.holders();
                let mut per: HashMap<&String, usize> = HashMap::new();
                for h in held.values() {
                    *per.entry(h).or_default() += 1;
                }
                // Shared: every subject held, by `want` daemons, none over its
                // share (a daemon gives back what is over it at its next claim,
                // the newcomer takes it at its own: for a moment one holds more).
                let shared = self.subjects().iter().all(|s| held.contains_key(s))
                    && per.len() == want
                    && per.values().all(|n| *n <= share);
                shared.then_some(held)
            },
            || {
                format!(
                    "the leases were not shared by {want} daemon(s): {:?}\n{}",
                    self.holders(),
                    logs_of(logs)
                )
            },
        )
    }

    /// The id a daemon gives on its `/healthz`.
    fn daemon_id(port: u16) -> String {
        let health = http_get(port, "/healthz", None).expect("healthz");
        serde_json::from_str::<Value>(health.split("\r\n\r\n").nth(1).expect("body")).expect("json")
            ["daemon"]
            .as_str()
            .expect("id")
            .to_owned()
    }

    fn count(&self, sql: &str) -> usize {
        self.pg.psql(sql).parse().expect("a count")
    }
}

#[test]
fn two_daemons_share_20_boxes_and_a_pool_and_a_wave_of_20_warnings_gets_exactly_20_replacements() {
    let shared = Shared::new(20, true);
    shared.up_all();
    let (a, port_a) = shared.serve("a");
    let (b, port_b) = shared.serve("b");
    // Every box, the pool and the chores held by exactly one daemon, both at work.
    let held = shared.wait_shared(2, &[&a, &b]);
    let mut per: HashMap<&String, usize> = HashMap::new();
    for h in held.values() {
        *per.entry(h).or_default() += 1;
    }
    let subjects = shared.subjects().len();
    assert!(
        per.values().all(|n| *n <= subjects.div_ceil(2)),
        "each holds at most its share: {per:?}"
    );
    // `/healthz` names each daemon and its leases; `/api/daemons` lists both.
    for port in [port_a, port_b] {
        let health = http_get(port, "/healthz", None).expect("healthz");
        let body: Value =
            serde_json::from_str(health.split("\r\n\r\n").nth(1).expect("body")).expect("json");
        let id = body["daemon"].as_str().expect("daemon id");
        assert!(per.contains_key(&id.to_owned()), "{body} {per:?}");
        let listed = http_get(port, "/api/daemons", Some(TOKEN)).expect("daemons");
        assert!(
            listed.contains(id) && listed.contains("\"this\":true"),
            "{listed}"
        );
    }
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            if shared.instances().values().flatten().count() < 20 || pool_live(&shared) < 2 {
                None
            } else {
                Some(())
            }
        },
        || "the pool did not reach its minimum".to_owned(),
    );

    let old = shared.live();
    assert_eq!(old.len(), 20, "{old:?}");
    let warnings: Vec<(String, String)> = old
        .values()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("aaaaaaaa-0000-0000-0000-{i:012}")))
        .collect();
    shared.wave(&warnings);
    let new = shared.wait_all_replaced(&old, &[&a, &b]);

    // Exactly 20 replacements: two instances ever per box, one live.
    for (bx, list) in shared.instances() {
        assert_eq!(list.len(), 2, "box {bx}: {list:?}");
    }
    assert_eq!(new.len(), 20);
    // Each event acted on once, its second delivery seen as a duplicate.
    assert_eq!(
        shared.count("SELECT COUNT(*) FROM processed_events WHERE owner = 'shared'"),
        20
    );
    assert_eq!(
        shared.count(
            "SELECT COUNT(*) FROM events WHERE owner = 'shared' AND kind = 'spot-interruption'"
        ),
        20
    );
    let duplicates: f64 = [port_a, port_b]
        .iter()
        .map(|p| metric(*p, "spotkeeper_events_total{kind=\"duplicate\"}"))
        .sum();
    assert_eq!(duplicates, 20.0);
    shared.check_volumes();
    assert_eq!(pool_live(&shared), 2, "the pool keeps its two");
    // A warning taken by the daemon that does not hold the box woke the one
    // that does (PostgreSQL NOTIFY), instead of leaving it to its next pass.
    let logs = format!("{}{}", a.log(), b.log());
    assert!(
        logs.contains("another daemon received a warning for it"),
        "no daemon was woken by the other:\n{logs}"
    );
    // Each replacement's lines carry its task's span (subject and kind): a
    // wave's twenty are told apart. Passes have theirs; a log file gets no
    // terminal colours.
    for bx in new.keys() {
        let tagged = format!("task{{subject=box:{bx} kind=replace");
        assert!(
            logs.lines()
                .any(|l| l.contains(&tagged) && l.contains("is up")),
            "no line of {bx}'s replacement names its task:\n{logs}"
        );
    }
    assert!(logs.lines().any(|l| l.contains("pass{n=")), "{logs}");
    assert!(!logs.contains('\x1b'), "colours in a log file:\n{logs}");
    // The database password: in no log line and no event.
    assert!(!logs.contains(PASSWORD));
    assert!(
        logs.contains("postgres://spotkeeper:***@"),
        "the store is named, redacted"
    );
    assert_eq!(
        shared.count(&format!(
            "SELECT COUNT(*) FROM events WHERE message LIKE '%{PASSWORD}%'"
        )),
        0
    );
    assert!(a.stop().success());
    assert!(b.stop().success());
}

/// Live instances of pool `workers`.
fn pool_live(shared: &Shared) -> usize {
    shared
        .cli
        .moto
        .boto(
            "r = ec2.describe_instances(Filters=[{'Name': 'tag:spotkeeper:pool', 'Values': ['workers']}, {'Name': 'instance-state-name', 'Values': ['pending', 'running']}])['Reservations']\n\
             print(sum(len(x['Instances']) for x in r))",
        )
        .trim()
        .parse()
        .expect("count")
}

#[test]
fn a_daemon_killed_mid_wave_has_its_boxes_taken_over_and_every_box_ends_with_one_instance() {
    let shared = Shared::new(20, true);
    shared.up_all();
    let (mut a, port_a) = shared.serve("a");
    let (b, port_b) = shared.serve("b");
    let held = shared.wait_shared(2, &[&a, &b]);
    let health = http_get(port_a, "/healthz", None).expect("healthz");
    let a_id = serde_json::from_str::<Value>(health.split("\r\n\r\n").nth(1).expect("body"))
        .expect("json")["daemon"]
        .as_str()
        .expect("id")
        .to_owned();
    let a_had = held.values().filter(|h| **h == a_id).count();
    assert!(a_had > 0, "{held:?}");

    let old = shared.live();
    let warnings: Vec<(String, String)> = old
        .values()
        .enumerate()
        .map(|(i, id)| (id.clone(), format!("bbbbbbbb-0000-0000-0000-{i:012}")))
        .collect();
    shared.wave(&warnings);
    // In the middle of the wave: replacements are in flight once the first
    // one was launched.
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(20),
        || {
            let launched = !shared
                .live_all()
                .values()
                .all(|l| old.values().any(|o| l == &vec![o.clone()]));
            launched.then_some(())
        },
        || format!("no replacement launched\n{}", a.log()),
    );
    let killed = Instant::now();
    a.child.kill().expect("SIGKILL");
    let _ = a.child.wait();

    let held = shared.wait_shared(1, &[&b]);
    let takeover = killed.elapsed();
    assert!(held.values().all(|h| *h != a_id), "{held:?}");
    println!(
        "takeover: daemon b held all {} subjects {:.1} s after daemon a was killed \
         ({a_had} of them a's; lease {} s, interval {} s)",
        held.len(),
        takeover.as_secs_f64(),
        LEASE.as_secs(),
        INTERVAL.as_secs()
    );
    assert!(
        takeover <= LEASE + INTERVAL * 2 + Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
    assert!(metric(port_b, "spotkeeper_lease_takeovers_total") >= 1.0);

    let new = shared.wait_all_replaced(&old, &[&b]);
    assert_eq!(new.len(), 20);
    // Stable: a few more passes change nothing, no box gets a second instance.
    common::wait_passes(port_b, 3, &b);
    assert_eq!(
        shared.live_all(),
        new.iter()
            .map(|(b, i)| (b.clone(), vec![i.clone()]))
            .collect()
    );
    shared.check_volumes();
    let events = shared
        .pg
        .psql("SELECT COUNT(*) FROM events WHERE owner = 'shared' AND kind = 'lease-takeover'");
    assert!(events.parse::<usize>().expect("count") >= 1);
    assert!(b.stop().success());
}

#[test]
fn a_cli_up_on_another_machine_racing_a_daemon_yields_one_instance() {
    let shared = Shared::new(1, false);
    shared.up_all();
    let (b, port_b) = shared.serve("b");
    shared.wait_shared(1, &[&b]);
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        let live = shared.live();
        let id = live.get("b00").expect("live").clone();
        // The instance goes away; the daemon (machine b) and `up` (machine
        // a: another state directory, the same database) both bring it back.
        shared
            .cli
            .moto
            .boto(&format!("ec2.terminate_instances(InstanceIds=['{id}'])"));
        let out = shared.cli.run(&["up", "b00", "--json"]);
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        // Let the daemon look again twice: it must find `up`'s instance (or
        // `up` the daemon's), not launch another.
        common::wait_passes(port_b, 2, &b);
        let after = shared.live_all();
        assert_eq!(
            after["b00"].len(),
            1,
            "round {round}: {after:?}\n{}",
            b.log()
        );
    }
    let ever = shared.instances().remove("b00").expect("b00");
    assert_eq!(
        ever.len(),
        1 + ROUNDS,
        "one launch per round: {ever:?}\n{}",
        b.log()
    );
    assert!(b.stop().success());
}

#[test]
fn an_up_on_one_machine_waits_for_an_up_on_another_and_launches_nothing() {
    let shared = Shared::new(1, false);
    // A ready check that takes seconds: the first `up` holds the box's lock
    // while it waits.
    let text = std::fs::read_to_string(shared.cli.config_path()).expect("config");
    shared.cli.write_config(&text.replace(
        "ready = { check = \"none\" }",
        "ready = { check = \"command\", command = \"sleep 3\", timeout = \"30s\" }",
    ));
    // Machine b names the database in its config file, not the environment.
    let (config_b, state_b) = shared.machine("b", spotkeeper_testkit::closed_port());
    let url = shared.cli.database.clone().expect("url");
    let text = std::fs::read_to_string(&config_b).expect("config");
    std::fs::write(
        &config_b,
        text.replace("[daemon]\n", &format!("[daemon]\ndatabase = \"{url}\"\n")),
    )
    .expect("write");
    let first = shared
        .cli
        .command_as(&config_b, &state_b, &["up", "b00", "--json"])
        .env_remove("SPOTKEEPER_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("up on b");
    // Once b has launched (it is in its ready check), a's `up` starts.
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            if shared.instances().is_empty() {
                None
            } else {
                Some(())
            }
        },
        || "b launched nothing".to_owned(),
    );
    let second = shared.cli.run(&["up", "b00", "--json"]);
    let first = first.wait_with_output().expect("b's up");
    assert!(first.status.success(), "{}", describe(&first));
    assert!(second.status.success(), "{}", describe(&second));
    // a waited for b's lock (in the database: their lock directories differ)…
    assert!(
        common::stderr(&second).contains("waiting for it to finish"),
        "{}",
        describe(&second)
    );
    // …and found b's instance instead of launching one.
    let id = |out: &std::process::Output| -> String {
        serde_json::from_slice::<Value>(&out.stdout).expect("json")["instance_id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    assert_eq!(id(&first), id(&second));
    assert_eq!(shared.instances()["b00"].len(), 1);
}

#[test]
fn a_database_that_cannot_be_opened_is_a_clear_error_without_the_password() {
    let shared = Shared::new(1, false);
    let mut cli_url = shared.cli.database.clone().expect("url");
    cli_url = cli_url.replace("/postgres?", "/no_such_db?");
    let out = shared
        .cli
        .command(&["pool", "list"])
        .env("SPOTKEEPER_DATABASE_URL", &cli_url)
        .output()
        .expect("pool list");
    assert!(!out.status.success());
    let text = describe(&out);
    assert!(
        text.contains("state database") && text.contains("no_such_db"),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");
    let out = shared
        .cli
        .command(&["pool", "list"])
        .env("SPOTKEEPER_DATABASE_URL", "mysql://db/x")
        .output()
        .expect("pool list");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(describe(&out).contains("$SPOTKEEPER_DATABASE_URL: mysql:// is not supported"));
}

#[test]
fn a_daemon_whose_config_names_another_owner_on_the_database_says_so_at_start() {
    let shared = Shared::new(1, false);
    let (b, port_b) = shared.serve("b");
    common::wait_passes(port_b, 1, &b);
    // Machine c's copy of the config names another owner (setup wrote a
    // generated one into one copy only, say).
    let port_c = spotkeeper_testkit::closed_port();
    let (config, state) = shared.machine("c", port_c);
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("owner = \"shared\"", "owner = \"other\""),
    )
    .expect("write");
    let setup = shared
        .cli
        .command_as(&config, &state, &["setup"])
        .output()
        .expect("setup");
    assert!(setup.status.success(), "{}", describe(&setup));
    let c = Serve::spawn(
        shared.cli.command_as(&config, &state, &["serve"]),
        shared.cli.dir.path().join("c.log"),
    );
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            c.log()
                .contains("uses this database as owner \"shared\", this one as owner \"other\"")
                .then_some(())
        },
        || format!("not said:\n{}", c.log()),
    );
    assert_eq!(
        shared
            .count("SELECT COUNT(*) FROM events WHERE owner = 'other' AND kind = 'owner-mismatch'"),
        1
    );
    assert!(c.stop().success());
    assert!(b.stop().success());
}

#[test]
fn a_daemon_whose_aws_hangs_loses_its_boxes_to_a_healthy_one_within_a_lease() {
    let shared = Shared::new(6, false);
    // A lease long enough that a third of it is over the least silence
    // that counts (5 s): the rule is then the lease's, not the floor's.
    let lease = Duration::from_secs(15);
    let text = std::fs::read_to_string(shared.cli.config_path()).expect("config");
    shared.cli.write_config(&text.replace(
        &format!("lease = \"{}s\"", LEASE.as_secs()),
        &format!("lease = \"{}s\"", lease.as_secs()),
    ));
    shared.up_all();
    // Machine a reaches EC2 through the fault proxy; b directly.
    let (a, port_a) = shared.serve_with(
        "a",
        &format!(
            "endpoint_url = \"{}\"\noperation_timeout = \"4s\"\nattempt_timeout = \"2s\"\nmax_attempts = 2\n",
            shared.cli.moto.proxy_endpoint()
        ),
    );
    let (b, port_b) = shared.serve("b");
    let held = shared.wait_shared(2, &[&a, &b]);
    let (a_id, b_id) = (Shared::daemon_id(port_a), Shared::daemon_id(port_b));
    let a_had: Vec<String> = held
        .iter()
        .filter(|(_, h)| **h == a_id)
        .map(|(s, _)| s.clone())
        .collect();
    assert!(!a_had.is_empty(), "{held:?}");

    // a's EC2 endpoint accepts calls and answers none; its database works.
    shared.cli.moto.set_faults(&spotkeeper_testkit::Faults {
        hang: true,
        ..spotkeeper_testkit::Faults::default()
    });
    let hung = Instant::now();
    let held = shared.wait_shared(1, &[&a, &b]);
    let moved = hung.elapsed();
    assert!(held.values().all(|h| *h == b_id), "{held:?}");
    println!(
        "a's AWS hung: b held all {} subjects {:.1} s later ({} of them a's; lease {} s)",
        held.len(),
        moved.as_secs_f64(),
        a_had.len(),
        lease.as_secs()
    );
    assert!(
        moved <= lease,
        "the boxes moved {moved:?} after the hang\n{}",
        a.log()
    );
    let said = shared.count(
        "SELECT COUNT(*) FROM events WHERE owner = 'shared' AND kind = 'leases-released' \
         AND message LIKE '%cannot reach AWS%'",
    );
    assert_eq!(said, 1, "a says once that it let go");
    // b acts on what was a's: one of a's boxes loses its instance, b
    // brings it back.
    let taken = a_had
        .iter()
        .find_map(|s| s.strip_prefix("box:"))
        .expect("a held a box")
        .to_owned();
    let old = shared.live()[&taken].clone();
    shared
        .cli
        .moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{old}'])"));
    spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(300),
        || {
            if shared.live().get(&taken).is_none_or(|id| *id == old) {
                None
            } else {
                Some(())
            }
        },
        || format!("b did not bring {taken} back\n{}", b.log()),
    );

    // AWS answers a again: it takes its share back.
    shared
        .cli
        .moto
        .set_faults(&spotkeeper_testkit::Faults::default());
    let held = shared.wait_shared(2, &[&a, &b]);
    assert!(held.values().any(|h| *h == a_id), "{held:?}");
    shared.check_volumes();
    assert!(shared.live_all().values().all(|l| l.len() == 1));
    assert!(a.stop().success());
    assert!(b.stop().success());
}

/// The A record of `b00.example.com`, if any.
fn b00_record(shared: &Shared) -> String {
    shared
        .cli
        .moto
        .boto(
            "z = r53.list_hosted_zones()['HostedZones'][0]['Id']\n\
             a = [x['ResourceRecords'][0]['Value'] for x in r53.list_resource_record_sets(HostedZoneId=z)['ResourceRecordSets'] \
             if x['Type'] == 'A' and x['Name'] == 'b00.example.com.']\n\
             print(a[0] if a else '')",
        )
        .trim()
        .to_owned()
}

/// `b00-data`'s attachments and instance `id`'s public address.
fn b00_volume_and_address(shared: &Shared, id: &str) -> (Vec<String>, String) {
    let out = shared.cli.moto.boto(&format!(
        "v = ec2.describe_volumes(Filters=[{{'Name': 'tag:Name', 'Values': ['b00-data']}}])['Volumes']\n\
         on = [a['InstanceId'] for x in v for a in x.get('Attachments', []) if a['State'] in ('attaching', 'attached')]\n\
         i = ec2.describe_instances(InstanceIds=['{id}'])['Reservations'][0]['Instances'][0]\n\
         print(json.dumps([on, i.get('PublicIpAddress', '')]))"
    ));
    serde_json::from_str(out.trim()).expect("json")
}

#[test]
fn a_daemon_paused_past_its_lease_resumes_mid_settle_and_changes_nothing_the_other_moved() {
    let shared = Shared::new(1, false);
    let gates = shared.cli.dir.path().join("gates");
    std::fs::create_dir_all(&gates).expect("gates");
    // Ready once the test opens the instance's gate (or the `all` gate);
    // each check leaves a mark, so the test sees who is waiting on what.
    let text = std::fs::read_to_string(shared.cli.config_path()).expect("config");
    let g = gates.display();
    shared.cli.write_config(
        &text
            .replace(
                "ready = { check = \"none\" }",
                &format!(
                    "ready = {{ check = \"command\", command = \"touch {g}/asked-{{id}}; test -e {g}/ready-{{id}} || test -e {g}/all\", timeout = \"10m\" }}\n\
                     dns = {{ zone = \"example.com\", name = \"b00.example.com\" }}"
                ),
            ),
    );
    shared
        .cli
        .moto
        .boto("r53.create_hosted_zone(Name='example.com', CallerReference='fence')");
    std::fs::write(gates.join("all"), "").expect("gate");
    shared.up_all();
    std::fs::remove_file(gates.join("all")).expect("gate");
    let first = shared.live()["b00"].clone();
    // `up`'s own ready check left its mark: the daemon's is awaited below.
    std::fs::remove_file(gates.join(format!("asked-{first}"))).expect("up's mark");
    // Someone moved the name by hand: the holder's next settle moves it
    // back, once the instance answers its ready check (it waits there).
    shared.cli.moto.boto(
        "z = r53.list_hosted_zones()['HostedZones'][0]['Id']\n\
         r53.change_resource_record_sets(HostedZoneId=z, ChangeBatch={'Changes': [{'Action': 'UPSERT', \
         'ResourceRecordSet': {'Name': 'b00.example.com.', 'Type': 'A', 'TTL': 60, 'ResourceRecords': [{'Value': '198.51.100.7'}]}}]})",
    );
    let (a, _) = shared.serve_with(
        "a",
        &format!("endpoint_url = \"{}\"\n", shared.cli.moto.proxy_endpoint()),
    );
    let asked = gates.join(format!("asked-{first}"));
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || if !asked.exists() { None } else { Some(()) },
        || format!("a never settled b00\n{}", a.log()),
    );
    // a waits in its settle for the first instance to answer. Paused there
    // (a stopped VM), well past its lease.
    let pid = a.child.id().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    signal("-STOP");
    let (b, port_b) = shared.serve("b");
    let b_id = Shared::daemon_id(port_b);
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let held = shared.holders();
            let all_b = shared.subjects().iter().all(|s| held.get(s) == Some(&b_id));
            all_b.then_some(())
        },
        || format!("b took nothing over: {:?}\n{}", shared.holders(), b.log()),
    );
    let (_, first_address) = b00_volume_and_address(&shared, &first);
    // While a sleeps, the first instance is interrupted and b replaces it:
    // the volume and the name follow the second.
    shared
        .cli
        .moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{first}'])"));
    let second = spotkeeper_testkit::eventually(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            for entry in std::fs::read_dir(&gates).expect("gates") {
                let name = entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8");
                if let Some(id) = name.strip_prefix("asked-")
                    && id != first
                {
                    std::fs::write(gates.join(format!("ready-{id}")), "").expect("gate");
                }
            }
            let id = shared
                .live()
                .get("b00")
                .filter(|id| **id != first)
                .cloned()?;
            let (on, address) = b00_volume_and_address(&shared, &id);
            (on == [id.clone()] && b00_record(&shared) == address).then_some(id)
        },
        || format!("b did not replace b00\n{}", b.log()),
    );
    let (_, second_address) = b00_volume_and_address(&shared, &second);
    assert_ne!(first_address, second_address);
    // a wakes up: its settle's instance answers now, and without fencing it
    // would point the name at the first (terminated) instance's address.
    std::fs::write(gates.join(format!("ready-{first}")), "").expect("gate");
    signal("-CONT");
    // It stops at its next step (or, unfenced, moves the name back).
    spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            (a.log().contains("no longer holds box:b00") || b00_record(&shared) != second_address)
                .then_some(())
        },
        || format!("a neither stopped at the fence nor acted\n{}", a.log()),
    );
    assert_eq!(
        b00_record(&shared),
        second_address,
        "the name stayed with b's instance"
    );
    common::wait_passes(port_b, 3, &b);
    assert_eq!(
        b00_record(&shared),
        second_address,
        "the name stayed with b's instance"
    );
    // Nobody pointed it at the first instance's released address, even
    // for a moment.
    assert_eq!(
        shared.count(&format!(
            "SELECT COUNT(*) FROM events WHERE owner = 'shared' AND kind = 'healed' \
             AND message LIKE '%{first_address}%'"
        )),
        0,
        "{}",
        a.log()
    );
    let (on, _) = b00_volume_and_address(&shared, &second);
    assert_eq!(
        on,
        vec![second.clone()],
        "the volume stayed on b's instance"
    );
    assert_eq!(
        shared.live_all()["b00"],
        vec![second.clone()],
        "no instance made or lost"
    );
    shared.check_volumes();
    assert!(
        shared.count(
            "SELECT COUNT(*) FROM events WHERE owner = 'shared' AND kind = 'fenced' \
             AND message LIKE '%no longer holds box:b00%'"
        ) >= 1,
        "{}",
        a.log()
    );
    assert!(a.stop().success());
    assert!(b.stop().success());
}

#[test]
fn a_daemon_whose_connections_would_overflow_the_servers_limit_refuses_to_start_and_says_why() {
    // 120 connections, 3 kept for superusers: 117 for the daemons.
    let shared = Shared::on(Postgres::start_with(&["max_connections=120"]), 1, false);
    // One daemon with the default max_tasks (64) may open 64 + 19 = 83.
    let (a, port_a) = shared.serve("a");
    common::wait_passes(port_a, 1, &a);
    assert_eq!(
        shared.count("SELECT connections FROM daemons WHERE owner = 'shared'"),
        83,
        "the daemon records what it may open"
    );
    // A second like it would make 166: refused, with the sum and the way out.
    let port_b = spotkeeper_testkit::closed_port();
    let (config, state) = shared.machine("b", port_b);
    let out = shared
        .cli
        .command_as(&config, &state, &["serve"])
        .output()
        .expect("serve");
    assert!(!out.status.success(), "{}", describe(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    for part in [
        "not starting",
        "may open 83 connections",
        "max_tasks 64",
        "the 1 other live daemon(s) on the database 83: 166 in all",
        "over the 117 the server allows (max_connections 120 less 3 reserved",
        "max_tasks + 19",
    ] {
        assert!(said.contains(part), "{part:?} not in: {said}");
    }
    assert!(!said.contains(PASSWORD), "{said}");
    assert_eq!(
        shared.count("SELECT COUNT(*) FROM daemons WHERE owner = 'shared'"),
        1,
        "the refused daemon left no row"
    );
    // With max_tasks = 10 it needs 29: 112 fits.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("[daemon]\n", "[daemon]\nmax_tasks = 10\n"),
    )
    .expect("write");
    let b = Serve::spawn(
        shared.cli.command_as(&config, &state, &["serve"]),
        shared.cli.dir.path().join("b.log"),
    );
    common::wait_passes(port_b, 1, &b);
    assert_eq!(
        shared.count("SELECT SUM(connections) FROM daemons WHERE owner = 'shared'"),
        112
    );
    assert!(b.stop().success());
    assert!(a.stop().success());
}

#[test]
fn a_warning_read_by_the_daemon_not_holding_the_box_has_its_hook_run_over_ssh_by_the_holder_before_the_hand_over()
 {
    let sshd = spotkeeper_testkit::Sshd::start();
    let marks = tempfile::tempdir().expect("tempdir");
    let ran = marks.path().join("ran");
    let shared = Shared::new(1, false);
    // The hook (over SSH: the test's sshd on loopback) writes when it starts
    // and when it ends, 2 s later.
    let hook = format!(
        "date +%s.%N >> {0}; sleep 2; date +%s.%N >> {0}",
        ran.display()
    );
    let text = std::fs::read_to_string(shared.cli.config_path()).expect("config");
    shared.cli.write_config(&text.replace(
        "ready = { check = \"none\" }\n",
        &format!(
            "ready = {{ check = \"none\" }}\n\
             ssh = {}\n\
             on_interruption = {{ command = \"{hook}\", timeout = \"30s\" }}\n",
            common::ssh_to(&sshd)
        ),
    ));
    shared.up_all();
    // Each daemon reads a queue of its own (`[daemon] queue`), so the test,
    // not SQS's choice between two long polls, decides which daemon a
    // warning reaches. Both reach EC2 through the proxy, which records when
    // each call arrives.
    shared.cli.moto.boto(
        "sqs = boto3.client('sqs', **kw)\n\
         for n in ('spotkeeper-a-events', 'spotkeeper-b-events'):\n    sqs.create_queue(QueueName=n)",
    );
    let proxy = format!("endpoint_url = \"{}\"\n", shared.cli.moto.proxy_endpoint());
    let (a, port_a) = shared.serve_configured("a", &proxy, "queue = \"spotkeeper-a-events\"\n");
    let (b, port_b) = shared.serve_configured("b", &proxy, "queue = \"spotkeeper-b-events\"\n");
    let logs = [&a, &b];
    let held = shared.wait_shared(2, &logs);
    let a_holds = held["box:b00"] == Shared::daemon_id(port_a);
    assert!(
        a_holds || held["box:b00"] == Shared::daemon_id(port_b),
        "{held:?}"
    );
    let (holder, reader, queue) = if a_holds {
        (&a, &b, "spotkeeper-b-events")
    } else {
        (&b, &a, "spotkeeper-a-events")
    };

    let old = shared.live();
    let sent = common::unix_now();
    shared.wave_to(queue, &[(old["b00"].clone(), "w-hook".into())]);
    let new = shared.wait_all_replaced(&old, &logs);
    let hook_ran: Vec<f64> = spotkeeper_testkit::eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let text = std::fs::read_to_string(&ran).ok()?;
            let times: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            (times.len() >= 2).then_some(times)
        },
        || format!("the hook did not run to its end\n{}", logs_of(&logs)),
    );
    let log = logs_of(&logs);
    // Once, by the holder: the daemon that read the warning recorded it; the
    // holder's next pass started the hook from that record.
    assert_eq!(hook_ran.len(), 2, "the hook ran once: {hook_ran:?}\n{log}");
    assert!(holder.log().contains("on_interruption started"), "{log}");
    assert!(!reader.log().contains("on_interruption started"), "{log}");
    let ended = hook_ran[1];
    // One replacement, and the old instance and its volume let go only
    // after the hook ended.
    let launch = shared.cli.proxy_calls("RunInstances", sent);
    let terminate = shared.cli.proxy_calls("TerminateInstances", sent);
    let detach = shared.cli.proxy_calls("DetachVolume", sent);
    assert_eq!(launch.len(), 1, "one replacement: {launch:?}\n{log}");
    assert_eq!(terminate.len(), 1, "{terminate:?}\n{log}");
    assert!(
        ended < terminate[0],
        "hook ended {ended}, terminate {terminate:?}\n{log}"
    );
    assert!(
        detach.iter().all(|t| ended < *t),
        "hook ended {ended}, detach {detach:?}\n{log}"
    );
    assert_ne!(new["b00"], old["b00"]);
    let hooks = shared
        .pg
        .psql("SELECT kind FROM events WHERE owner = 'shared' AND kind LIKE 'hook%' ORDER BY id");
    assert_eq!(hooks.trim(), "hook", "{log}");
    shared.check_volumes();
    assert!(a.stop().success());
    assert!(b.stop().success());
}
