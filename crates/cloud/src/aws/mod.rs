//! `AwsCloud`: the [`Cloud`](crate::Cloud) trait over the official AWS SDK. One
//! file per AWS area; this one builds the clients and turns SDK errors into
//! [`CloudError`]s.

mod dns;
mod fis;
mod images;
mod instances;
mod interfaces;
mod keys;
mod network;
mod queue;
mod volumes;
mod vpc;

pub use fis::{FIS_SPOT_ACTION, FisDrill, FisRequest};
pub use images::{CANONICAL_OWNER, al2023_parameter, ubuntu_parameter};
#[cfg(feature = "test-util")]
pub(crate) use network::{is_group_id, resolve_groups};
pub use queue::{
    EVENT_RULES, Plumbing, QUEUE_RETENTION_SECONDS, QueueMessage, RECEIVE_VISIBILITY_SECONDS,
    rule_name,
};
pub use volumes::{data_device_names, next_free_device};
pub use vpc::{VPC_TAG, VpcInfo, split_cidr};
mod pricing;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::error::{CloudError, ErrorKind};

/// Where and as whom to talk to AWS. Credentials are deliberately absent: they
/// come from the standard chain (environment, profiles, SSO, instance role).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Region, e.g. `us-east-1`; default: the chain's (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Named profile from `~/.aws/config`.
    pub profile: Option<String>,
    /// Endpoint override, e.g. a local emulator. `AWS_ENDPOINT_URL` is honoured too.
    pub endpoint_url: Option<String>,
    /// How long one call may take, retries included; default [`DEFAULT_OPERATION_TIMEOUT`].
    pub operation_timeout: Option<Duration>,
    /// How long one attempt of a call may take; default [`DEFAULT_ATTEMPT_TIMEOUT`].
    pub attempt_timeout: Option<Duration>,
    /// Attempts per call (the first included); default [`DEFAULT_MAX_ATTEMPTS`].
    pub max_attempts: Option<u32>,
    /// Adaptive retries (a client-side rate limiter that slows down when AWS
    /// throttles) instead of the standard mode (exponential backoff with jitter).
    pub adaptive_retry: bool,
}

/// A call that has not finished after this long, retries included, fails:
/// an endpoint that accepts the connection and never answers must not hang
/// the caller. A minute covers a slow describe of thousands of instances.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

/// One attempt that has not answered after this long is abandoned and retried.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Establishing a connection: AWS endpoints answer in milliseconds.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Attempts per call: the SDK's standard mode backs off exponentially with
/// jitter between them; throttling (`RequestLimitExceeded`) and 5xx are retried.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

impl ClientConfig {
    /// The SDK timeout settings this config asks for.
    pub fn timeout_config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_timeout(self.operation_timeout.unwrap_or(DEFAULT_OPERATION_TIMEOUT))
            .operation_attempt_timeout(self.attempt_timeout.unwrap_or(DEFAULT_ATTEMPT_TIMEOUT))
            .build()
    }

    /// The SDK retry settings this config asks for.
    pub fn retry_config(&self) -> RetryConfig {
        let base = if self.adaptive_retry {
            RetryConfig::adaptive()
        } else {
            RetryConfig::standard()
        };
        base.with_max_attempts(self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1))
    }
}

/// The region whose endpoint serves the AWS Price List API.
pub const PRICING_REGION: &str = "us-east-1";

/// The AWS implementation of [`Cloud`](crate::Cloud): one handle holding the
/// EC2 client, and the SSM, Route53, SQS, EventBridge and Price List ones,
/// each built on its first use: a one-shot command such as `list` builds
/// only the client it calls.
#[derive(Clone)]
pub struct AwsCloud {
    pub(crate) ec2: aws_sdk_ec2::Client,
    ssm: Lazy<aws_sdk_ssm::Client>,
    route53: Lazy<aws_sdk_route53::Client>,
    sqs: Lazy<aws_sdk_sqs::Client>,
    events: Lazy<aws_sdk_eventbridge::Client>,
    pricing: Lazy<aws_sdk_pricing::Client>,
    fis: Lazy<aws_sdk_fis::Client>,
    region: String,
    calls: Arc<AtomicU64>,
}

/// A client built on first use (shared by the handle's clones).
#[derive(Clone)]
struct Lazy<C> {
    cell: Arc<std::sync::OnceLock<C>>,
    make: Arc<dyn Fn() -> C + Send + Sync>,
}

impl<C> Lazy<C> {
    fn new(make: impl Fn() -> C + Send + Sync + 'static) -> Self {
        Self {
            cell: Arc::default(),
            make: Arc::new(make),
        }
    }

    fn ready(client: C) -> Self
    where
        C: Clone + Send + Sync + 'static,
    {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(client.clone());
        Self {
            cell: Arc::new(cell),
            make: Arc::new(move || client.clone()),
        }
    }

    fn get(&self) -> &C {
        self.cell.get_or_init(|| (self.make)())
    }
}

/// Counts the HTTP requests the SDK clients send (retries included).
#[derive(Debug)]
struct CallCounter(Arc<AtomicU64>);

impl aws_sdk_ec2::config::Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "spotkeeper-call-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_ec2::config::RuntimeComponents,
        _cfg: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl fmt::Debug for AwsCloud {
    // The SDK config holds the credentials provider; never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCloud")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsCloud {
    /// Loads the SDK configuration (credential chain, region, retries with
    /// backoff for throttling and 5xx) and builds the clients.
    pub async fn connect(config: &ClientConfig) -> Result<Self, CloudError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(config.timeout_config())
            .retry_config(config.retry_config());
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        // The endpoint the SDK will use: the config's, else the standard
        // environment variable's (scripts/emulator sets that one).
        let endpoint = config
            .endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(client) = endpoint.as_deref().and_then(plain_http_client) {
            loader = loader.http_client(client);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(CloudError::other(
                "LoadConfig",
                ErrorKind::InvalidRequest,
                "no AWS region: set [aws] region in the config, AWS_REGION, or a profile's region",
            ));
        }
        Self::from_sdk_config(&sdk)
    }

    /// Builds the clients from an SDK configuration the caller loaded itself
    /// (custom credentials provider, retry or timeout settings).
    pub fn from_sdk_config(sdk: &aws_config::SdkConfig) -> Result<Self, CloudError> {
        let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
            CloudError::other(
                "LoadConfig",
                ErrorKind::InvalidRequest,
                "the SDK configuration has no region",
            )
        })?;
        let calls = Arc::new(AtomicU64::new(0));
        let counter = {
            let calls = calls.clone();
            move || CallCounter(calls.clone())
        };
        let (sdk, count) = (sdk.clone(), counter.clone());
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&sdk)
                .interceptor(counter())
                .build(),
        );
        macro_rules! lazy {
            ($sdk:ident, $($region:expr)?) => {{
                let (sdk, count) = (sdk.clone(), count.clone());
                Lazy::new(move || {
                    $sdk::Client::from_conf(
                        $sdk::config::Builder::from(&sdk)
                            $(.region(Region::new($region)))?
                            .interceptor(count())
                            .build(),
                    )
                })
            }};
        }
        Ok(Self {
            ec2,
            ssm: lazy!(aws_sdk_ssm,),
            route53: lazy!(aws_sdk_route53,),
            sqs: lazy!(aws_sdk_sqs,),
            events: lazy!(aws_sdk_eventbridge,),
            // The Price List API answers in us-east-1 (for every region).
            pricing: lazy!(aws_sdk_pricing, PRICING_REGION),
            fis: lazy!(aws_sdk_fis,),
            region,
            calls,
        })
    }

    /// The SSM client.
    pub(crate) fn ssm(&self) -> &aws_sdk_ssm::Client {
        Lazy::get(&self.ssm)
    }

    /// The Route53 client.
    pub(crate) fn route53(&self) -> &aws_sdk_route53::Client {
        Lazy::get(&self.route53)
    }

    /// The SQS client.
    pub(crate) fn sqs(&self) -> &aws_sdk_sqs::Client {
        Lazy::get(&self.sqs)
    }

    /// The EventBridge client.
    pub(crate) fn events(&self) -> &aws_sdk_eventbridge::Client {
        Lazy::get(&self.events)
    }

    /// The Price List client.
    pub(crate) fn pricing(&self) -> &aws_sdk_pricing::Client {
        Lazy::get(&self.pricing)
    }

    /// The Fault Injection Service client.
    pub(crate) fn fis(&self) -> &aws_sdk_fis::Client {
        Lazy::get(&self.fis)
    }

    /// Replaces the Fault Injection Service client (see [`AwsCloud::from_clients`]).
    pub fn with_fis_client(mut self, fis: aws_sdk_fis::Client) -> Self {
        self.fis = Lazy::ready(fis);
        self
    }

    /// How many HTTP requests this handle's clients have sent to AWS so far
    /// (retries included). Clients passed to [`AwsCloud::from_clients`] are
    /// not counted.
    pub fn aws_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Replaces the SQS and EventBridge clients (see [`AwsCloud::from_clients`]).
    pub fn with_queue_clients(
        mut self,
        sqs: aws_sdk_sqs::Client,
        events: aws_sdk_eventbridge::Client,
    ) -> Self {
        self.sqs = Lazy::ready(sqs);
        self.events = Lazy::ready(events);
        self
    }

    /// Replaces the Price List client (see [`AwsCloud::from_clients`]).
    pub fn with_pricing_client(mut self, pricing: aws_sdk_pricing::Client) -> Self {
        self.pricing = Lazy::ready(pricing);
        self
    }

    /// Wraps clients the caller built (custom HTTP client, interceptors, mocks).
    /// The queue clients (SQS, EventBridge) come from [`AwsCloud::with_queue_clients`].
    pub fn from_clients(
        ec2: aws_sdk_ec2::Client,
        ssm: aws_sdk_ssm::Client,
        route53: aws_sdk_route53::Client,
        region: impl Into<String>,
    ) -> Self {
        // Queue clients without credentials: their calls fail with a clear
        // error until `with_queue_clients` provides real ones.
        let mut builder =
            aws_config::SdkConfig::builder().behavior_version(BehaviorVersion::latest());
        builder.set_region(ec2.config().region().cloned());
        let sdk = builder.build();
        Self {
            ec2,
            ssm: Lazy::ready(ssm),
            route53: Lazy::ready(route53),
            sqs: Lazy::ready(aws_sdk_sqs::Client::new(&sdk)),
            events: Lazy::ready(aws_sdk_eventbridge::Client::new(&sdk)),
            pricing: Lazy::ready(aws_sdk_pricing::Client::new(&sdk)),
            fis: Lazy::ready(aws_sdk_fis::Client::new(&sdk)),
            region: region.into(),
            calls: Arc::default(),
        }
    }

    /// Connects to an AWS emulator at `endpoint` (e.g. moto on loopback) with
    /// dummy credentials, ignoring the environment's credential chain.
    #[cfg(feature = "test-util")]
    pub async fn connect_emulator(endpoint: &str, region: &str) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(client) = plain_http_client(endpoint) {
            loader = loader.http_client(client);
        }
        let sdk = loader
            .region(Region::new(region.to_owned()))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "emulator",
            ))
            .load()
            .await;
        Self::from_sdk_config(&sdk).expect("a region was set")
    }

    /// The underlying EC2 client: the escape hatch for calls this crate does not wrap.
    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.ec2
    }
}

/// The SDK's HTTP client for a plain `http://` endpoint (an emulator, a
/// local proxy): its usual rustls over aws-lc, with an empty trust store.
/// The default client reads the system's root certificates before its first
/// request (on Debian, the bundle and then ~150 files in /etc/ssl/certs:
/// a third of a one-shot command's time) even when nothing will ever do TLS.
/// `None` for `https://` endpoints: they keep the system's roots.
fn plain_http_client(endpoint: &str) -> Option<aws_sdk_ec2::config::SharedHttpClient> {
    use aws_smithy_http_client::tls;
    if !endpoint.to_ascii_lowercase().starts_with("http://") {
        return None;
    }
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::empty().with_native_roots(false))
        .build()
        .ok()?;
    Some(
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https(),
    )
}

/// `tags` set at creation on each resource of `kinds` (EC2's
/// TagSpecifications); `None` without tags.
pub(crate) fn tagged_at_creation(
    kinds: &[aws_sdk_ec2::types::ResourceType],
    tags: &[(String, String)],
) -> Option<Vec<aws_sdk_ec2::types::TagSpecification>> {
    use aws_sdk_ec2::types::{Tag, TagSpecification};
    if tags.is_empty() {
        return None;
    }
    let aws: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    Some(
        kinds
            .iter()
            .map(|k| {
                TagSpecification::builder()
                    .resource_type(k.clone())
                    .set_tags(Some(aws.clone()))
                    .build()
            })
            .collect(),
    )
}

/// Turns an SDK error into a one-line [`CloudError`] naming the operation.
pub(crate) fn sdk_error<E, R>(operation: &'static str, err: SdkError<E, R>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match e.code() {
                Some(code) => CloudError::from_code(operation, code, e.message().unwrap_or("")),
                None => CloudError::other(
                    operation,
                    ErrorKind::Other,
                    format!(
                        "AWS answered with an error without a code: {}",
                        error_chain(&err)
                    ),
                ),
            }
        }
        SdkError::TimeoutError(_) => CloudError::other(
            operation,
            ErrorKind::Unreachable,
            format!(
                "no answer from AWS within the time limit (operation or attempt timeout): {}",
                error_chain(&err)
            ),
        ),
        SdkError::DispatchFailure(_) => CloudError::other(
            operation,
            ErrorKind::Unreachable,
            format!("no answer from AWS: {}", error_chain(&err)),
        ),
        SdkError::ConstructionFailure(_) => {
            let text = error_chain(&err);
            let kind = if text.contains("credentials") {
                ErrorKind::Unauthorized
            } else {
                ErrorKind::InvalidRequest
            };
            CloudError::other(operation, kind, format!("request not sent: {text}"))
        }
        _ => CloudError::other(
            operation,
            ErrorKind::Other,
            format!("unreadable answer from AWS: {}", error_chain(&err)),
        ),
    }
}

/// The messages of an error and its sources joined by ": ", each once. (The
/// SDK's `DisplayErrorContext` appends a `Debug` dump, which users must not see.)
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !msg.is_empty() && !parts.iter().any(|p| p.contains(&msg)) {
            parts.push(msg);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// `Ok(None)` when AWS says the thing does not exist: for a look-up that
/// is an answer, not a failure.
pub(crate) fn absent<T>(r: Result<T, CloudError>) -> Result<Option<T>, CloudError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A delete of something already gone succeeded.
pub(crate) fn ignore_not_found<T>(r: Result<T, CloudError>) -> Result<(), CloudError> {
    absent(r).map(|_| ())
}

pub(crate) fn tag_map(
    tags: &[aws_sdk_ec2::types::Tag],
) -> std::collections::BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect()
}

pub(crate) fn tag_filters(filter: &crate::TagFilter) -> Vec<aws_sdk_ec2::types::Filter> {
    use aws_sdk_ec2::types::Filter;
    filter
        .tags
        .iter()
        .map(|(key, value)| match value {
            Some(v) => Filter::builder()
                .name(format!("tag:{key}"))
                .values(v)
                .build(),
            None => Filter::builder().name("tag-key").values(key).build(),
        })
        .collect()
}

#[cfg(test)]
mod plain_http_tests {
    #[test]
    fn only_a_plain_http_endpoint_gets_the_client_without_root_certificates() {
        assert!(super::plain_http_client("http://127.0.0.1:5000").is_some());
        assert!(super::plain_http_client("HTTP://localhost:4566").is_some());
        assert!(super::plain_http_client("https://ec2.us-east-1.amazonaws.com").is_none());
        assert!(super::plain_http_client("https://127.0.0.1:5000").is_none());
    }
}
