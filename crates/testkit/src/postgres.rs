//! Throwaway PostgreSQL servers for the shared-database tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::sshd::run;

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
