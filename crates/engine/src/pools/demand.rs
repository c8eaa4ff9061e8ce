//! Reading a pool's demand: the number of pending jobs. A failure (source
//! down, slow, not JSON) is an `Err` with a reason; the planner then holds the
//! pool instead of scaling it down.

use async_trait::async_trait;
use std::sync::Arc;

use spotkeeper_cloud::JobQueue;

use super::Demand;
use crate::config::DemandHost;
use crate::config::demand_hosts::refused_address;

/// Largest demand response read (a JSON array of pending jobs).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Where pending-job counts come from.
#[async_trait]
pub trait DemandReader: Send + Sync {
    /// Pending jobs of `demand`, or why they cannot be counted.
    async fn pending(&self, demand: &Demand) -> Result<u64, String>;
}

/// Reads HTTP sources with reqwest and SQS sources through a [`JobQueue`].
#[derive(Debug, Clone)]
pub struct LiveDemand {
    http: reqwest::Client,
    /// For pools registered through the API: resolves names itself and
    /// refuses addresses `[api] demand_hosts` does not allow, so the
    /// address checked is the address connected to (no DNS rebinding).
    guarded: reqwest::Client,
    hosts: Arc<Vec<DemandHost>>,
    aws: Option<Arc<dyn JobQueue>>,
}

/// A client that follows redirects to the same host only (a demand URL must
/// not become a way to reach another address).
fn client() -> reqwest::ClientBuilder {
    crate::tls::http_client().redirect(reqwest::redirect::Policy::custom(|attempt| {
        let same_host =
            attempt.previous().first().map(|u| u.host_str()) == Some(attempt.url().host_str());
        if same_host && attempt.previous().len() < 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    }))
}

impl LiveDemand {
    /// A reader; without `aws`, SQS sources report an error. Pools
    /// registered through the API may ask no address but public ones.
    pub fn new(aws: Option<Arc<dyn JobQueue>>) -> Self {
        Self::guarded_by(aws, Vec::new())
    }

    /// A reader whose API pools may also ask the addresses `hosts` lists.
    pub fn guarded_by(aws: Option<Arc<dyn JobQueue>>, hosts: Vec<DemandHost>) -> Self {
        let hosts = Arc::new(hosts);
        Self {
            http: client().build().unwrap_or_default(),
            guarded: client()
                .no_proxy()
                .dns_resolver(Arc::new(Guard(hosts.clone())))
                .build()
                .unwrap_or_default(),
            hosts,
            aws,
        }
    }
}

/// Resolves a name and refuses it when any of its addresses is one the
/// daemon may not be sent to.
struct Guard(Arc<Vec<DemandHost>>);

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let hosts = self.0.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            for a in &addrs {
                if let Some(why) = refused_address(&hosts, a.ip()) {
                    return Err(format!(
                        "{name} resolves to {}, {why} that [api] demand_hosts does not list",
                        a.ip()
                    )
                    .into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The guarded client does not resolve an address literal: checked here.
fn literal_refused(hosts: &[DemandHost], url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let ip: std::net::IpAddr = parsed
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    refused_address(hosts, ip)
        .map(|why| format!("{ip} is {why} that [api] demand_hosts does not list"))
}

#[async_trait]
impl DemandReader for LiveDemand {
    async fn pending(&self, demand: &Demand) -> Result<u64, String> {
        match demand {
            Demand::None => Ok(0),
            Demand::Http {
                url: full,
                timeout,
                headers,
                bearer_env,
                guarded,
            } => {
                // What errors (and so events) say: never the credentials a
                // URL may carry (user:password@, a token in the query), nor
                // a header's value.
                let url = redacted(full);
                let url = url.as_str();
                let bearer = match bearer_env {
                    None => None,
                    Some(var) => match std::env::var(var) {
                        Ok(v) if !v.is_empty() => Some(v),
                        _ => {
                            return Err(format!(
                                "GET {url}: bearer_env {var} is not set in the daemon's environment"
                            ));
                        }
                    },
                };
                if *guarded && let Some(why) = literal_refused(&self.hosts, full) {
                    return Err(format!("GET {url}: {why}"));
                }
                let http = if *guarded { &self.guarded } else { &self.http };
                let read = async {
                    let mut req = http.get(full).header("accept", "application/json");
                    for (name, value) in headers {
                        req = req.header(name.as_str(), value.as_str());
                    }
                    if let Some(token) = &bearer {
                        req = req.bearer_auth(token);
                    }
                    let mut resp = req
                        .send()
                        .await
                        .map_err(|e| format!("GET {url}: {}", without_url(&e)))?;
                    let status = resp.status();
                    if status.is_redirection() {
                        return Err(format!(
                            "GET {url}: HTTP {status}: redirects to another host are not followed"
                        ));
                    }
                    if !status.is_success() {
                        return Err(format!("GET {url}: HTTP {status}"));
                    }
                    let mut body = Vec::new();
                    while let Some(chunk) = resp
                        .chunk()
                        .await
                        .map_err(|e| format!("GET {url}: {}", without_url(&e)))?
                    {
                        if body.len() + chunk.len() > MAX_BODY {
                            return Err(format!("GET {url}: the answer is over {MAX_BODY} bytes"));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    count_jobs(&body).map_err(|e| format!("GET {url}: {e}"))
                };
                tokio::time::timeout(*timeout, read)
                    .await
                    .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
            }
            Demand::Sqs { queue } => {
                let aws = self
                    .aws
                    .as_ref()
                    .ok_or_else(|| format!("SQS queue {queue}: no AWS connection"))?;
                aws.queue_depth(queue)
                    .await
                    .map_err(|e| format!("SQS queue {queue}: {e}"))
            }
        }
    }
}

/// `url` without its user name, password and query: what may be said of it.
pub fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            let had_query = u.query().is_some();
            u.set_query(None);
            let mut s = u.to_string();
            if had_query {
                s.push_str("?…");
            }
            s
        }
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

/// reqwest's errors repeat the URL; we say it once (and never in full:
/// `without_url` also drops it from nested causes).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
        text = text.replace(url.as_str(), &redacted(url.as_str()));
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// The number of pending jobs in a demand answer: the length of a JSON array.
pub fn count_jobs(body: &[u8]) -> Result<u64, String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not JSON ({e}); expected an array of pending jobs"))?;
    match value {
        serde_json::Value::Array(jobs) => Ok(jobs.len() as u64),
        other => Err(format!(
            "expected a JSON array of pending jobs, got {}",
            match other {
                serde_json::Value::Object(_) => "an object",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{count_jobs, redacted};

    #[test]
    fn credentials_in_a_demand_url_are_never_repeated() {
        assert_eq!(
            redacted("https://user:pa55@queue.internal:8080/v1/jobs?token=abc&state=PENDING"),
            "https://queue.internal:8080/v1/jobs?…"
        );
        assert_eq!(
            redacted("http://queue.internal/jobs"),
            "http://queue.internal/jobs"
        );
        assert_eq!(redacted("::"), "(unparsable URL)");
    }

    #[test]
    fn the_count_is_the_length_of_the_array_and_anything_else_is_an_error() {
        assert_eq!(count_jobs(b"[]"), Ok(0));
        assert_eq!(count_jobs(br#"[{"id":1},{"id":2},3]"#), Ok(3));
        assert!(
            count_jobs(b"<html>")
                .expect_err("an error")
                .contains("not JSON")
        );
        assert!(
            count_jobs(br#"{"jobs":[]}"#)
                .expect_err("an error")
                .contains("an object")
        );
        assert!(count_jobs(b"").is_err());
    }
}
