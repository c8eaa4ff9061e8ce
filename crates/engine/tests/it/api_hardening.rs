//! The API's HTTP server and its secrets, hardened: a slow client cannot
//! hold a connection, the number of connections is bounded, the token is
//! long and its file private, and the state file is this user's alone.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_engine::api::{self, ApiState, Limits};
use spotkeeper_engine::config::{self, Secret};
use spotkeeper_engine::daemon::CancellationToken;
use spotkeeper_engine::store::Store;

fn config() -> config::Config {
    config::parse(Path::new("t.toml"), "owner = \"tester\"\n").expect("valid")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
}

#[test]
fn tokens_are_long_and_the_token_file_is_private() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("state/api-token");
    let cfg = config();
    let short = api::load_or_make_token(&cfg, Some("short".into()), &file);
    assert!(
        short.is_err_and(|e| e.to_string().contains("at least 16")),
        "a short SPOTKEEPER_API_TOKEN is refused"
    );
    let made = api::load_or_make_token(&cfg, None, &file).expect("made");
    assert!(made.expose().len() >= 16);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(
        api::load_or_make_token(&cfg, None, &file)
            .expect("read back")
            .expose(),
        made.expose()
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let open = api::load_or_make_token(&cfg, None, &file);
    assert!(
        open.is_err_and(|e| e.to_string().contains("0600")),
        "a token file others can read is refused"
    );
}

#[tokio::test]
async fn the_state_file_and_its_directory_are_private() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("new/state.db");
    let _store = Store::open(&path).await.expect("open");
    assert_eq!(mode(&dir.path().join("new")), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let cloud = Arc::new(FakeCloud::new(&["us-east-1a"]));
    let locks = tempfile::tempdir().expect("dir");
    let state = ApiState {
        daemon_id: "test-daemon".into(),
        cloud,
        store: Store::memory().await.expect("store"),
        config: Arc::new(config()),
        token: Secret::new("test-token-0123456789"),
        lock_dir: locks.path().to_path_buf(),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: Arc::default(),
        health: {
            let h = spotkeeper_engine::daemon::health::HealthState::default();
            h.set(spotkeeper_engine::daemon::health::Health::Ok);
            h
        },
        dns_cache: Default::default(),
        seen: Default::default(),
        queue: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let rx = stop.clone();
    let limits = Limits {
        header_read: Duration::from_millis(500),
        request: Duration::from_secs(5),
        connections: 2,
    };
    let server = tokio::spawn(api::serve_with(listener, state, rx, limits));

    let client = tokio::task::spawn_blocking(move || {
        let connect = || {
            let s = std::net::TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s
        };
        // Two idle connections take both slots: a third is closed at once.
        let mut idle = [connect(), connect()];
        std::thread::sleep(Duration::from_millis(100));
        let mut third = connect();
        let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = [0u8; 64];
        let n = third.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "over the limit: closed without an answer");
        // The idle ones (no headers sent) are closed after the header timeout.
        let started = std::time::Instant::now();
        for c in &mut idle {
            let _ = c.read(&mut buf);
        }
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(4), "cut off after {waited:?}");
        // The slots are free again.
        let mut ok = connect();
        ok.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = ok.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    });
    client.await.expect("client checks");
    stop.cancel();
    server.await.expect("joined").expect("served");
}
