//! Rendering: progress on stderr (a spinner on a terminal, plain lines
//! otherwise), tables and JSON on stdout, logging setup.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use spotkeeper_cloud::Instance;
use spotkeeper_cloud::model::tags;
use spotkeeper_engine::boxes::Progress;

/// Diagnostics go to stderr through `tracing`; `RUST_LOG` overrides `-v`.
pub fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or journald gets plain text.
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Progress on stderr, in the seed's style: `Waiting for … . . . Instance is running.`
#[derive(Debug)]
pub struct Steps {
    spinner: Mutex<Option<ProgressBar>>,
    fancy: bool,
}

impl Steps {
    pub fn new() -> Self {
        Self {
            spinner: Mutex::new(None),
            fancy: std::io::stderr().is_terminal(),
        }
    }
}

impl Progress for Steps {
    fn note(&self, line: &str) {
        let guard = self.spinner.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn start(&self, what: &str) {
        let mut guard = self.spinner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = guard.take() {
            old.finish_and_clear();
        }
        if self.fancy {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{msg} {spinner} {elapsed}")
                    .expect("static template is valid"),
            );
            bar.set_message(format!("{what} ..."));
            bar.enable_steady_tick(Duration::from_millis(120));
            *guard = Some(bar);
        } else {
            eprint!("{what} ... ");
        }
    }

    fn finish(&self, outcome: &str) {
        let mut guard = self.spinner.lock().unwrap_or_else(|e| e.into_inner());
        match guard.take() {
            Some(bar) => {
                let msg = bar.message();
                bar.finish_and_clear();
                eprintln!("{msg} {outcome}");
            }
            None => eprintln!("{outcome}"),
        }
    }
}

/// The JSON shape of an instance (`list --json`, `up --json`).
#[derive(Debug, Serialize)]
pub struct InstanceJson<'a> {
    #[serde(rename = "box")]
    pub box_name: Option<&'a str>,
    pub instance_id: &'a str,
    pub state: &'a str,
    pub instance_type: &'a str,
    pub zone: Option<&'a str>,
    /// The zone's region (a box that failed over runs in another).
    pub region: Option<&'a str>,
    pub market: &'a str,
    pub spot_request_id: Option<&'a str>,
    pub public_ip: Option<&'a str>,
    pub private_ip: Option<&'a str>,
    pub launched_at: Option<String>,
    pub image_id: Option<&'a str>,
    pub tags: &'a std::collections::BTreeMap<String, String>,
}

impl<'a> From<&'a Instance> for InstanceJson<'a> {
    fn from(i: &'a Instance) -> Self {
        Self {
            box_name: i.tag(tags::BOX),
            instance_id: i.id.as_str(),
            state: i.state.as_str(),
            instance_type: &i.instance_type,
            zone: i.zone.as_deref(),
            region: i
                .zone
                .as_deref()
                .map(spotkeeper_engine::failover::region_of_zone),
            market: i.market.as_str(),
            spot_request_id: i.spot_request_id.as_ref().map(|r| r.as_str()),
            public_ip: i.public_ip.as_deref(),
            private_ip: i.private_ip.as_deref(),
            launched_at: i.launched_at.map(rfc3339),
            image_id: i.image_id.as_ref().map(|r| r.as_str()),
            tags: &i.tags,
        }
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as an aligned table with a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// One table row for an instance.
pub fn instance_row(i: &Instance) -> Vec<String> {
    let dash = || "-".to_owned();
    vec![
        i.tag(tags::BOX).unwrap_or("-").to_owned(),
        i.id.to_string(),
        i.state.to_string(),
        i.instance_type.clone(),
        i.zone.clone().unwrap_or_else(dash),
        i.zone.as_deref().map_or_else(dash, |z| {
            spotkeeper_engine::failover::region_of_zone(z).to_owned()
        }),
        i.market.to_string(),
        i.public_ip.clone().unwrap_or_else(dash),
        i.private_ip.clone().unwrap_or_else(dash),
        i.launched_at.map(rfc3339).unwrap_or_else(dash),
    ]
}

/// Header matching [`instance_row`].
pub const INSTANCE_HEADER: [&str; 10] = [
    "BOX",
    "INSTANCE",
    "STATE",
    "TYPE",
    "ZONE",
    "REGION",
    "MARKET",
    "PUBLIC IP",
    "PRIVATE IP",
    "LAUNCHED",
];
