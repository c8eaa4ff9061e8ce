//! Test support: starts the AWS emulator (moto, through `scripts/moto_server.py`)
//! on a free loopback port, hands out the environment that points the AWS SDK
//! (and the `spotkeeper` binary) at it with dummy credentials, and stops it
//! when dropped. If moto is not installed the test fails, saying how to
//! install it; it never skips.
//!
//! Beside it (a module each): a real OpenSSH server on loopback (`sshd`), an
//! HTTP receiver for notifications (`receiver`), throwaway PostgreSQL servers
//! (`postgres`), a QEMU machine with a real kernel (`qemu`),
//! [`closed_port`] for the servers a test starts itself, and [`eventually`]
//! (and [`eventually_async`]), the tests' deadline loop.

pub mod qemu;

mod moto;
mod postgres;
mod receiver;
mod sshd;
mod zygote;

pub use moto::{Faults, Moto, REGION, moto_python};
pub use postgres::{Postgres, TEST_DATABASE_VAR, test_database};
pub use receiver::{Answer, Received, Receiver};
pub use sshd::{FakeCloudInit, Sshd};

/// The tests' one deadline loop: calls `check` every `every` until it gives
/// `Some`, for at most `within`, and returns what it gave; otherwise panics
/// with `failure()` (what did not happen, a daemon's log, the state last
/// seen).
pub fn eventually<T>(
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
    failure: impl Fn() -> String,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n(not within {within:?})",
            failure()
        );
        std::thread::sleep(every);
    }
}

/// [`eventually`] for async tests: awaits `check` every `every` (on tokio's
/// timer) until it gives `Some`, for at most `within` of real time.
pub async fn eventually_async<T, F, Fut>(
    within: std::time::Duration,
    every: std::time::Duration,
    mut check: F,
    failure: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}\n(not within {within:?})",
            failure()
        );
        tokio::time::sleep(every).await;
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
