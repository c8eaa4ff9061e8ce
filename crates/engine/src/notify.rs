//! Notifications: `[[notify]]` sinks (a JSON webhook, optionally signed with
//! HMAC-SHA256, or a Slack incoming webhook) told about events as they are
//! recorded.
//!
//! The outbox is the event log itself: an event is written once, in its own
//! transaction, and each sink keeps a cursor in the state store (the last
//! event id it has received) with its retry state. A sink's deliverer sends
//! the events after its cursor in order and moves the cursor only after the
//! receiver said 2xx, so a notification survives a daemon restart or a
//! `kill -9` and is sent at least once (the receiver de-duplicates by the
//! event id). Each sink has its own task: a dead or hanging receiver delays
//! only its own notifications, never the reconciler or another sink.
//!
//! A sink's URL (a Slack webhook's path is its secret) and its signing secret
//! never appear in logs, errors or `Debug`: only the scheme and host do.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::config::Secret;
pub use crate::config::sinks::{DEFAULT_EVENTS, SecretSource, Sink, SinkKind, origin};
use crate::store::{Event, Store, StoreError};

/// Signature header of a webhook with a secret: `sha256=<hex HMAC of the body>`.
pub const SIGNATURE_HEADER: &str = "x-spotkeeper-signature";
/// The event id, also in the body: what the receiver de-duplicates by.
pub const EVENT_HEADER: &str = "x-spotkeeper-event";

/// One attempt may take this long; then it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// At most this many events per look at the log.
const BATCH: i64 = 100;

impl Sink {
    /// Whether the sink gets events of this kind.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.iter().any(|k| k == "*" || k == kind)
    }

    /// The body to POST for an event.
    pub fn body(&self, owner: &str, e: &Event) -> String {
        let time = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(e.at).unwrap_or(0)),
        )
        .to_string();
        match self.kind {
            SinkKind::Webhook => json!({
                "id": e.id,
                "time": time,
                "owner": owner,
                "box": e.box_name,
                "pool": e.pool,
                "kind": e.kind,
                "message": e.message,
            }),
            SinkKind::Slack => {
                let subject = match (&e.box_name, &e.pool) {
                    (Some(b), _) => format!("box {b}"),
                    (None, Some(p)) => format!("pool {p}"),
                    (None, None) => "spotkeeper".to_owned(),
                };
                json!({ "text": format!("[{owner}] {subject}: {} — {}", e.kind, e.message) })
            }
        }
        .to_string()
    }
}

/// `sha256=<hex>` of the HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Why a sink cannot run.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `secret_env` names a variable that is not set.
    #[error("notify {sink}: secret_env {var} is not set in the daemon's environment")]
    MissingSecret {
        /// Sink.
        sink: String,
        /// Variable.
        var: String,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A sink ready to deliver: its secret resolved.
pub struct Deliverer {
    sink: Sink,
    secret: Option<Secret>,
    owner: String,
    http: reqwest::Client,
    /// The first wait after a failure (doubles up to five minutes).
    pub base_backoff: Duration,
    /// How often the log is looked at when nothing is pending.
    pub poll: Duration,
    /// Delivers only while this is set: the daemon holding the `fleet`
    /// lease tells the sinks, so several daemons do not tell them twice.
    pub gate: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deliverer")
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// Resolves the sink's secret (from the environment for `secret_env`).
    pub fn new(sink: Sink, owner: &str) -> Result<Self, NotifyError> {
        let secret = match &sink.secret {
            None => None,
            Some(SecretSource::Inline(s)) => Some(s.clone()),
            Some(SecretSource::Env(var)) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Secret::new(v)),
                _ => {
                    return Err(NotifyError::MissingSecret {
                        sink: sink.name.clone(),
                        var: var.clone(),
                    });
                }
            },
        };
        let http = crate::tls::http_client()
            .timeout(ATTEMPT_TIMEOUT)
            .connect_timeout(ATTEMPT_TIMEOUT)
            // A redirect would send the event (and its signature) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Ok(Self {
            sink,
            secret,
            owner: owner.to_owned(),
            http,
            base_backoff: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            gate: None,
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.sink.name
    }

    /// One POST; `Err` says why it did not count as delivered (no URL in it).
    async fn send(&self, e: &Event) -> Result<(), String> {
        let body = self.sink.body(&self.owner, e);
        let mut req = self
            .http
            .post(self.sink.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, e.id.to_string());
        if let Some(secret) = &self.secret {
            req = req.header(
                SIGNATURE_HEADER,
                signature(secret.expose(), body.as_bytes()),
            );
        }
        match req.body(body).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) if e.is_timeout() => Err(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
            Err(e) if e.is_connect() => Err("could not connect".to_owned()),
            Err(_) => Err("the request failed".to_owned()),
        }
    }

    /// Delivers until `shutdown` resolves: the events after the sink's
    /// cursor, in order, each retried with backoff until the receiver takes
    /// it. A new sink starts after the newest event (no flood of history).
    pub async fn run(
        &self,
        store: Store,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), NotifyError> {
        tokio::pin!(shutdown);
        let open = || {
            self.gate
                .as_ref()
                .is_none_or(|g| g.load(std::sync::atomic::Ordering::SeqCst))
        };
        // A sink seen for the first time starts after the newest event now,
        // whether or not this daemon delivers: not when the gate opens.
        store
            .for_owner(&self.owner)
            .notify_cursor(&self.sink.name)
            .await?;
        loop {
            // Another daemon may have delivered while this one did not hold
            // the gate: the cursor is read again each time it opens.
            while !open() {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(self.poll) => {}
                }
            }
            let cursor = store
                .for_owner(&self.owner)
                .notify_cursor(&self.sink.name)
                .await?;
            if self
                .deliver_while(&open, cursor, &store, &metrics, &mut shutdown)
                .await?
            {
                return Ok(());
            }
        }
    }

    /// Delivers from `cursor` while `open` says so; `true` once shut down.
    async fn deliver_while(
        &self,
        open: &(dyn Fn() -> bool + Sync),
        mut cursor: crate::store::NotifyCursor,
        store: &Store,
        metrics: &crate::metrics::Metrics,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Result<bool, NotifyError> {
        loop {
            if !open() {
                return Ok(false);
            }
            let events = store
                .for_owner(&self.owner)
                .events_after(cursor.last_event, BATCH)
                .await?;
            let mut wait = self.poll;
            let stored = cursor.last_event;
            for (place, e) in &events {
                if !self.sink.wants(&e.kind) {
                    cursor.last_event = *place;
                    continue;
                }
                let outcome = tokio::select! {
                    () = shutdown.as_mut() => return Ok(true),
                    r = self.send(e) => r,
                };
                metrics.notification(&self.sink.name, outcome.is_ok());
                match outcome {
                    Ok(()) => {
                        cursor.last_event = *place;
                        cursor.attempts = 0;
                        store
                            .for_owner(&self.owner)
                            .notify_delivered(&self.sink.name, *place)
                            .await?;
                    }
                    Err(why) => {
                        cursor.attempts += 1;
                        wait = backoff(self.base_backoff, cursor.attempts);
                        tracing::warn!(
                            sink = %self.sink.name,
                            event = e.id,
                            attempts = cursor.attempts,
                            "notification not delivered ({why}); retrying in {wait:?}"
                        );
                        store
                            .for_owner(&self.owner)
                            .notify_failed(&self.sink.name, &cursor, &why)
                            .await?;
                        break;
                    }
                }
            }
            if cursor.attempts == 0 && cursor.last_event > stored {
                // Skipped kinds at the end: remembered, so a restart does not read them again.
                store
                    .for_owner(&self.owner)
                    .notify_delivered(&self.sink.name, cursor.last_event)
                    .await?;
            }
            if events.is_empty() || cursor.attempts > 0 {
                tokio::select! {
                    () = shutdown.as_mut() => return Ok(true),
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

fn backoff(base: Duration, attempts: u32) -> Duration {
    base.saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(text: &str) -> Result<Vec<Sink>, crate::config::ConfigError> {
        crate::config::parse(Path::new("n.toml"), text).map(|c| c.notify)
    }

    #[test]
    fn sinks_parse_with_defaults_and_never_show_their_url_or_secret() {
        let sinks = parse(
            "[[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/p/abc?token=t0ps3cret\"\nsecret = \"0123456789abcdef-hmac\"\n\
             [[notify]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T0/B0/s3cretpath\"\nevents = [\"replaced\"]\n",
        )
        .expect("valid");
        assert_eq!(sinks[0].name, "webhook-1");
        assert_eq!(sinks[0].events.len(), DEFAULT_EVENTS.len());
        assert!(sinks[0].wants("replaced") && !sinks[0].wants("registered"));
        assert_eq!(sinks[1].name, "chat");
        assert!(!sinks[1].wants("launch-failed"));
        let shown = format!("{sinks:?}");
        for secret in ["t0ps3cret", "0123456789abcdef-hmac", "s3cretpath", "/p/abc"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("https://hooks.example.com"), "{shown}");
    }

    #[test]
    fn bad_sinks_are_located() {
        for (table, says, line) in [
            ("kind = \"pager\"\nurl = \"https://x.example\"", "kind", 2),
            (
                "kind = \"webhook\"\nurl = \"ftp://x.example/secret\"",
                "http(s)",
                3,
            ),
            (
                "kind = \"webhook\"\nurl = \"https://x.example\"\nsecret = \"short\"",
                "at least 16",
                4,
            ),
            (
                "kind = \"slack\"\nurl = \"https://x.example\"\nsecret_env = \"S\"",
                "applies to kind = \"webhook\"",
                4,
            ),
            (
                "kind = \"webhook\"\nurl = \"https://x.example\"\nevents = [\"Replaced!\"]",
                "not an event kind",
                4,
            ),
            (
                // A typo: today a sink that would silently hear nothing.
                "kind = \"webhook\"\nurl = \"https://x.example\"\nevents = [\"replaced\", \"replace-faild\"]",
                "\"replace-faild\" is not an event kind; the kinds are spot-interruption,",
                4,
            ),
            (
                "kind = \"webhook\"\nurl = \"https://x.example\"\nretries = 3",
                "retries",
                4,
            ),
        ] {
            let e = parse(&format!("[[notify]]\n{table}\n")).expect_err(table);
            assert!(e.message.contains(says), "{table}: {e}");
            assert_eq!(e.line, Some(line), "{table}: {e}");
            assert!(!e.to_string().contains("secret\""), "{e}");
        }
        // The error points at the unknown kind, and lists the known ones.
        let e = parse(
            "[[notify]]\nname = \"n\"\nkind = \"webhook\"\nurl = \"https://x.example\"\nevents = [\"replaced\", \"stop-faild\"]\n",
        )
        .expect_err("typo");
        assert_eq!((e.line, e.column), (Some(5), Some(23)), "{e}");
        assert!(
            e.message.contains("replace-failed") && e.message.contains("\"*\""),
            "{e}"
        );
        let e = parse("[[notify]]\nkind = \"webhook\"\nurl = \"ftp://x.example/secret\"\n")
            .expect_err("ftp");
        assert!(
            !e.to_string().contains("/secret"),
            "the path is not shown: {e}"
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let b = Duration::from_secs(1);
        assert_eq!(backoff(b, 1), Duration::from_secs(1));
        assert_eq!(backoff(b, 3), Duration::from_secs(4));
        assert_eq!(backoff(b, 40), MAX_BACKOFF);
    }
}
