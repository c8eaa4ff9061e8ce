//! A pool's `demand.http` against a receiver on 127.0.0.1: the configured
//! headers and the bearer token from the daemon's environment are sent; the
//! token never appears in what is said; an unset variable sends nothing.

use std::path::Path;

use spotkeeper_engine::pools::demand::{DemandReader, LiveDemand};
use spotkeeper_testkit::{Answer, Receiver};

fn demand(url: &str, extra: &str) -> spotkeeper_engine::pools::Demand {
    let text = format!(
        "[pool.p]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\" }} ]\nmax_price = 0.02\nmax_capacity = 2\n\
         demand = {{ http = \"{url}\", timeout = \"3s\"{extra} }}\n"
    );
    spotkeeper_engine::config::parse(Path::new("p.toml"), &text)
        .expect("valid")
        .pools["p"]
        .demand
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_and_the_bearer_token_are_sent_and_the_token_is_never_said() {
    // An environment variable every test process has (cargo sets it).
    let token = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let r = Receiver::start(Answer::Ok, 0);
    let d = demand(
        &r.url("/v1/jobs?state=PENDING"),
        ", headers = { \"X-Team\" = \"ml\" }, bearer_env = \"CARGO_MANIFEST_DIR\"",
    );
    // The receiver answers an empty body: not a job list, an error.
    let err = LiveDemand::new(None)
        .pending(&d)
        .await
        .expect_err("no JSON");
    assert!(!err.contains(&token), "{err}");
    let got = r.got();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["x-team"], "ml");
    assert_eq!(got[0].headers["authorization"], format!("Bearer {token}"));

    let unset = demand(
        &r.url("/v1/jobs"),
        ", bearer_env = \"SPOTKEEPER_NO_SUCH_VARIABLE_SET\"",
    );
    let err = LiveDemand::new(None)
        .pending(&unset)
        .await
        .expect_err("unset");
    assert!(
        err.contains("bearer_env SPOTKEEPER_NO_SUCH_VARIABLE_SET is not set"),
        "{err}"
    );
    assert_eq!(r.got().len(), 1, "nothing sent without the token");
}

#[test]
fn bad_headers_are_config_errors() {
    for (extra, says) in [
        (
            ", headers = { \"Bad Header\" = \"x\" }",
            "not a header name",
        ),
        (", headers = { \"Host\" = \"evil\" }", "not a header name"),
        (", bearer_env = \"lower\"", "environment variable name"),
        (
            ", bearer_env = \"T\", headers = { \"Authorization\" = \"Basic x\" }",
            "not both",
        ),
    ] {
        let text = format!(
            "[pool.p]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\" }} ]\nmax_price = 0.02\nmax_capacity = 2\n\
             demand = {{ http = \"http://127.0.0.1:9/jobs\"{extra} }}\n"
        );
        let e = spotkeeper_engine::config::parse(Path::new("p.toml"), &text).expect_err(extra);
        assert!(e.message.contains(says), "{extra}: {e}");
        assert_eq!(e.line, Some(6), "{e}");
    }
}

/// The demand of a pool registered through the API (`desired::stored_pool`
/// marks it so).
fn from_the_api(mut d: spotkeeper_engine::pools::Demand) -> spotkeeper_engine::pools::Demand {
    if let spotkeeper_engine::pools::Demand::Http { guarded, .. } = &mut d {
        *guarded = true;
    }
    d
}

fn listed(hosts: &[&str]) -> LiveDemand {
    LiveDemand::guarded_by(
        None,
        hosts
            .iter()
            .map(|h| spotkeeper_engine::config::DemandHost::parse(h).expect("entry"))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_pool_asks_no_loopback_link_local_or_private_address_unless_it_is_listed() {
    let r = Receiver::start(Answer::Ok, 0);
    let url = r.url("/v1/jobs");
    assert!(url.contains("127.0.0.1"), "{url}");
    // An address literal, a name that resolves to loopback, the metadata
    // service: refused before anything is sent.
    for (d, reader, says) in [
        (
            demand(&url, ""),
            listed(&[]),
            "127.0.0.1 is a loopback address",
        ),
        (
            demand(&url.replace("127.0.0.1", "localhost"), ""),
            listed(&["localhost"]),
            "localhost resolves to",
        ),
        (
            demand("http://169.254.169.254/latest/meta-data/iam/", ""),
            listed(&["169.254.169.254.nip.io"]),
            "a link-local address (the instance metadata service is one)",
        ),
    ] {
        let err = reader.pending(&from_the_api(d)).await.expect_err("refused");
        assert!(err.contains(says), "{says}: {err}");
    }
    assert!(r.got().is_empty(), "nothing was sent");
    // The operator listed the address: asked (the empty answer is no job list).
    let err = listed(&["127.0.0.1"])
        .pending(&from_the_api(demand(&url, "")))
        .await
        .expect_err("not JSON");
    assert!(err.contains("not JSON"), "{err}");
    assert_eq!(r.got().len(), 1);
    // A pool of the config file is the operator's own: asked as written.
    let _ = LiveDemand::new(None).pending(&demand(&url, "")).await;
    assert_eq!(r.got().len(), 2);
}
