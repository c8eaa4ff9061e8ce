//! The dashboard in a real browser: `spotkeeper serve` against the emulator
//! with a box, a pool, events and price samples, driven through headless
//! Chromium (Debian `chromium` + `chromium-driver`, installed by
//! `scripts/setup`) over WebDriver. It asserts what a person sees: the wrong
//! token refused, the box row, its replacement after an interruption, the
//! price and pool charts with their points, the savings. It leaves a
//! screenshot in the target directory (`dashboard.png`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{CONFIG, Cli, Serve, wait_passes};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const TOKEN: &str = "browser-token-0123456789";

/// chromedriver on a loopback port, in its own PID namespace; killed (with
/// every browser it started) when dropped.
struct Driver {
    child: Child,
    port: u16,
    /// The browser's TMPDIR. Chromium leaves its singleton socket's
    /// directory (`org.chromium.Chromium.*`) in the temporary directory when
    /// it is killed, one per run: this one goes with the driver.
    _tmp: tempfile::TempDir,
}

impl Driver {
    fn start() -> Self {
        let port = spotkeeper_testkit::closed_port();
        use std::os::unix::process::CommandExt as _;
        if let Err(e) = Command::new("chromedriver").arg("--version").output() {
            panic!(
                "chromedriver is not installed ({e}): run scripts/setup (Debian chromium and chromium-driver)"
            );
        }
        // In a PID namespace of its own, chromedriver first: when it goes,
        // the kernel takes every browser process with it, and no signal a
        // browser process sends (Chromium's shutdown may signal every
        // process it can see) reaches the other tests.
        let tmp = tempfile::tempdir().expect("a temporary directory for the browser");
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "--", "chromedriver"])
            .arg(format!("--port={port}"))
            .env("TMPDIR", tmp.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("unshare: {e}"));
        spotkeeper_testkit::eventually(
            Duration::from_secs(20),
            Duration::from_millis(100),
            || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
            || format!("chromedriver did not listen on {port}"),
        );
        Driver {
            child,
            port,
            _tmp: tmp,
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // unshare's --kill-child takes chromedriver, and with it its
        // namespace (every Chromium process), even after a failed assertion
        // left the session open.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,2200", "--no-first-run", "--disable-background-networking"]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!("an object literal")
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session through chromedriver")
}

/// Polls `f` until it yields, for up to `secs` seconds; on time-out says
/// what the page showed at the last look.
async fn eventually<T, F, Fut>(c: &Client, secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let shown = std::sync::Mutex::new(String::new());
    spotkeeper_testkit::eventually_async(
        Duration::from_secs(secs),
        Duration::from_millis(250),
        || {
            let found = f();
            let shown = &shown;
            async move {
                let v = found.await;
                if v.is_none() {
                    let body = texts(c, "body").await.join("\n");
                    let logs = c
                        .execute("return window.__errors || []", vec![])
                        .await
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    *shown.lock().unwrap_or_else(|e| e.into_inner()) =
                        format!("{body}\nscript errors: {logs}");
                }
                v
            }
        },
        || {
            let last = shown.lock().map(|s| s.clone()).unwrap_or_default();
            format!("the page never showed {what}; it shows:\n{last}")
        },
    )
    .await
}

async fn texts(c: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css(css)).await.unwrap_or_default() {
        out.push(e.text().await.unwrap_or_default());
    }
    out
}

async fn sign_in(c: &Client, token: &str) {
    let input = c.find(Locator::Id("token")).await.expect("token field");
    input.clear().await.expect("clear");
    input.send_keys(token).await.expect("type");
    c.find(Locator::Id("go"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
}

fn config(api_port: u16) -> String {
    format!(
        "{}\n[pool.builders]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\", capacity = 1 }} ]\n\
         zones = [\"us-east-1a\", \"us-east-1b\"]\nmax_price = 0.03\nmin_capacity = 1\nmax_capacity = 2\n\n\
         [cost]\non_demand = {{ \"t3.micro\" = 0.0104, \"t3a.micro\" = 0.0094 }}\n",
        CONFIG
            .replace(
                "[aws]",
                &format!("[daemon]\ninterval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken = \"{TOKEN}\"\n\n[aws]"),
            )
            .replace(
                "tags =",
                "regions = [\"us-east-1\", \"us-west-2\"]\n\
                 failover_after = \"0s\"\nreturn_after = \"10s\"\n\
                 data_volume = { name = \"dev-data\", size_gb = 5, replicate = \"10m\" }\ntags =",
            )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_boxes_a_replacement_charts_savings_replicas_and_a_failover_in_chromium()
 {
    let api_port = spotkeeper_testkit::closed_port();
    let cli = Cli::with_config(&config(api_port));
    cli.moto.set_market(
        &[("t3.micro", Some(0.0031)), ("t3a.micro", Some(0.005))],
        &[],
    );
    cli.ok(&["setup"]);
    let first = cli.json(&["up", "dev", "--json"]);
    let old = first["instance_id"].as_str().expect("id").to_owned();
    let serve = Serve::start(&cli);
    wait_passes(api_port, 2, &serve);

    let driver = Driver::start();
    let c = browser(&driver).await;
    c.goto(&format!("http://127.0.0.1:{api_port}/"))
        .await
        .expect("open the page");

    // A wrong token: a clear message, nothing shown.
    sign_in(&c, "not-the-token-at-all").await;
    let message = eventually(&c, 20, "the wrong-token message", || async {
        let t = texts(&c, "#message").await.join("");
        t.contains("Wrong token").then_some(t)
    })
    .await;
    assert!(message.contains("refused"), "{message}");
    assert!(texts(&c, "#boxes tbody tr").await.is_empty());

    // The right one: the box row, its instance, a running badge, the DNS-less cell.
    sign_in(&c, TOKEN).await;
    eventually(&c, 30, "the box row with its instance", || async {
        let names = texts(&c, "#boxes td.box-name").await;
        let instances = texts(&c, "#boxes td.instance").await;
        (names == ["dev"] && instances == [old.clone()]).then_some(())
    })
    .await;
    assert!(
        texts(&c, "#boxes .badge")
            .await
            .iter()
            .any(|b| b == "running")
    );
    assert!(texts(&c, "#message").await.join("").is_empty());
    // Its data volume's replica in the other region: the recovery point.
    eventually(&c, 30, "the box's recovery point", || async {
        let cells = texts(&c, "#boxes td.replicas").await;
        cells
            .iter()
            .any(|t| t.contains("a failover to us-west-2 now would lose up to"))
            .then_some(())
    })
    .await;
    // The daemons: this one, with its leases (the box, the pool, the chores).
    let daemons = eventually(&c, 30, "the daemons table", || async {
        let rows = texts(&c, "#daemons tbody tr").await;
        rows.iter()
            .any(|r| r.contains("(this one)") && r.contains("box:dev"))
            .then_some(rows)
    })
    .await;
    assert_eq!(daemons.len(), 1, "{daemons:?}");

    // Charts: the box's and the pool's price charts and the pool's units, with points.
    let circles = eventually(&c, 30, "charts with sample points", || async {
        let n = c
            .find_all(Locator::Css("#price-charts svg circle"))
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        let charts = c
            .find_all(Locator::Css(".chart svg"))
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        (n > 0 && charts >= 3).then_some(n)
    })
    .await;
    assert!(circles > 0);
    let chart_text = texts(&c, "#price-charts").await.join(" ");
    assert!(chart_text.contains("ceiling 0.02"), "{chart_text}");
    assert!(
        texts(&c, "#savings .card")
            .await
            .join(" ")
            .contains("Saved")
    );

    // A drill through the API (a warning shaped like EventBridge's): the
    // page follows the box to its new instance by itself.
    let drill = crate::common::http(api_port, "POST", "/api/boxes/dev/drill", Some(TOKEN))
        .expect("the API answers");
    assert!(drill.starts_with("HTTP/1.1 202"), "{drill}");
    let new = eventually(&c, 60, "the replacement instance", || async {
        let instances = texts(&c, "#boxes td.instance").await;
        instances
            .first()
            .filter(|i| i.starts_with("i-") && **i != old)
            .cloned()
    })
    .await;
    let live: Vec<Value> = cli
        .live()
        .into_iter()
        .filter(|i| i["box"] == "dev")
        .collect();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        live[0]["instance_id"],
        new.as_str(),
        "the page shows the live one"
    );
    eventually(
        &c,
        20,
        "the replacement and the drill in the event timeline",
        || async {
            let cells = texts(&c, "#events td").await;
            (cells.iter().any(|t| t == "replaced")
                && cells.iter().any(|t| t == "drill")
                && cells.iter().any(|t| t.contains("(drill)")))
            .then_some(())
        },
    )
    .await;
    // Availability beside savings: the box's downtime over its interruption.
    let card = eventually(&c, 40, "the box's downtime card", || async {
        texts(&c, "#savings .card")
            .await
            .into_iter()
            .find(|t| t.contains("box dev") && t.contains("over 1 interruption"))
    })
    .await;
    assert!(card.contains("down "), "{card}");

    // The timeline's filters: one kind, then one subject.
    let kind = c
        .find(Locator::Id("event-kind"))
        .await
        .expect("kind filter");
    kind.select_by_value("replaced")
        .await
        .expect("select a kind");
    let kinds = eventually(&c, 10, "only replaced events", || async {
        let kinds: Vec<String> = texts(&c, "#events tbody tr td:nth-child(3)").await;
        (!kinds.is_empty() && kinds.iter().all(|k| k == "replaced")).then_some(kinds)
    })
    .await;
    assert!(!kinds.is_empty());
    kind.select_by_value("").await.expect("all kinds");
    c.find(Locator::Id("event-subject"))
        .await
        .expect("subject filter")
        .select_by_value("pool builders")
        .await
        .expect("select the pool");
    eventually(&c, 10, "only the pool's events", || async {
        let subjects = texts(&c, "#events tbody tr td:nth-child(2)").await;
        (!subjects.is_empty() && subjects.iter().all(|s| s == "pool builders")).then_some(())
    })
    .await;
    c.find(Locator::Id("event-subject"))
        .await
        .expect("subject filter")
        .select_by_value("")
        .await
        .expect("all subjects");

    // us-east-1 runs out of capacity and the box's instance is taken: the
    // page shows it in us-west-2 (from its image and replica copied there)
    // and the failover; capacity comes back: home again, and the return.
    cli.ok(&["snapshot", "dev"]);
    let prices = [("t3.micro", Some(0.0031)), ("t3a.micro", Some(0.005))];
    cli.moto.set_market(&prices, &["us-east-1"]);
    cli.moto
        .boto(&format!("ec2.terminate_instances(InstanceIds=['{new}'])"));
    eventually(&c, 90, "the box failed over to us-west-2", || async {
        let regions = texts(&c, "#boxes td.region").await;
        let kinds = texts(&c, "#events td").await;
        (regions.iter().any(|r| r == "us-west-2 (failed over)")
            && kinds.iter().any(|k| k == "region-failover"))
        .then_some(())
    })
    .await;
    cli.moto.set_market(&prices, &[]);
    eventually(&c, 90, "the box back in us-east-1", || async {
        let regions = texts(&c, "#boxes td.region").await;
        let kinds = texts(&c, "#events td").await;
        (regions == ["us-east-1"] && kinds.iter().any(|k| k == "region-return")).then_some(())
    })
    .await;

    let png = c.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).expect("save the screenshot");
    eprintln!("screenshot: {}", path.display());
    c.close().await.expect("close the browser");
    assert!(serve.stop().success());
}
