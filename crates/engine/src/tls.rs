//! The HTTP client for webhooks and demand URLs, on the AWS SDK's TLS stack.
//!
//! The SDK's client is rustls with the aws-lc-rs provider. reqwest is built
//! without a provider of its own (`rustls-tls-native-roots-no-provider`), so
//! ring is not compiled beside aws-lc-rs: this module installs aws-lc-rs as
//! the process's default provider before the first reqwest client is built.
//! reqwest panics ("No provider set") when built with none, hence one place.

use std::sync::Once;

/// A reqwest client builder with spotkeeper's user agent and the process's
/// TLS provider installed.
pub(crate) fn http_client() -> reqwest::ClientBuilder {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Err means another provider is installed already: that one is used.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
    reqwest::Client::builder().user_agent(concat!("spotkeeper/", env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_builds_with_the_sdks_provider_and_has_root_certificates_to_use() {
        let client = super::http_client().build();
        assert!(client.is_ok(), "{client:?}");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
