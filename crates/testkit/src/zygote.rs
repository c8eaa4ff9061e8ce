//! The emulator's zygote (`scripts/moto_zygote.py`): one Python process per
//! network namespace that has imported moto and boto3 and warmed up their
//! backends once, and forks a fresh emulator, or a boto3 script, per request
//! in milliseconds. Starting `moto_server.py` per test cost 2.3 s of CPU
//! each, most of the suite's CPU on two cores.
//!
//! `SPOTKEEPER_MOTO_ZYGOTE=0` starts a process per emulator instead, as
//! before; so does any failure to reach a zygote.

use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a request may wait for its answer: the first requests wait
/// for the zygote's warm-up (4 s alone, more beside a busy suite).
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/moto_zygote.py")
}

/// The zygote's abstract socket name: a changed launcher, zygote or Python
/// gets a zygote of its own.
fn name(python: &Path, launcher: &Path) -> Option<String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    python.hash(&mut h);
    std::fs::read(script()).ok()?.hash(&mut h);
    std::fs::read(launcher).ok()?.hash(&mut h);
    Some(format!("spotkeeper-moto-{:016x}", h.finish()))
}

fn connect(name: &str) -> Option<UnixStream> {
    let addr = SocketAddr::from_abstract_name(name).ok()?;
    UnixStream::connect_addr(&addr).ok()
}

/// Starts a zygote and waits until it holds the name (or another one that
/// started at the same time does). It outlives the test: it is in a process
/// group of its own and leaves after two idle minutes.
fn start(python: &Path, name: &str) -> Option<()> {
    let mut child = Command::new(python)
        .arg(script())
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    matches!(line.trim(), "BOUND" | "TAKEN").then_some(())
}

/// Sends `request` (one line of JSON) to this namespace's zygote, starting
/// one if there is none, and reads the first line of its answer. The stream
/// stays open: a forked emulator lives as long as it does. `None` when no
/// zygote answered: the caller starts its own process.
pub(crate) fn ask(
    python: &Path,
    launcher: &Path,
    request: &serde_json::Value,
) -> Option<(UnixStream, String)> {
    if std::env::var_os("SPOTKEEPER_MOTO_ZYGOTE").is_some_and(|v| v == "0") {
        return None;
    }
    let name = name(python, launcher)?;
    // An idle zygote may leave between connect and accept: try again.
    for _ in 0..3 {
        let stream = match connect(&name) {
            Some(s) => s,
            None => {
                start(python, &name)?;
                match connect(&name) {
                    Some(s) => s,
                    None => continue,
                }
            }
        };
        if let Some(line) = exchange(&stream, request) {
            return Some((stream, line));
        }
    }
    None
}

fn exchange(mut stream: &UnixStream, request: &serde_json::Value) -> Option<String> {
    stream.set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
    stream.write_all(format!("{request}\n").as_bytes()).ok()?;
    // Nothing follows the answer's line: a buffer takes nothing from the stream.
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    stream.set_read_timeout(None).ok()?;
    line.ends_with('\n').then(|| line.trim_end().to_owned())
}
