//! `FakeCloud`: an in-memory [`Cloud`] for behaviour tests. Unlike the emulator it
//! honours client tokens (same token and parameters → same instance; other
//! parameters → `IdempotentParameterMismatch`), lets a test set a price per
//! (type, zone), injects errors per operation, and logs every call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::cloud::Cloud;
use crate::error::{CloudError, ErrorKind};
use crate::model::{
    ImageId, ImageRef, Instance, InstanceId, InstanceState, LaunchSpec, Market, SpotPrice,
    SpotRequest, SpotRequestId, SpotRequestState, TagFilter,
};

#[derive(Debug, Default)]
struct State {
    zones: Vec<String>,
    prices: BTreeMap<(String, String), f64>,
    subnets: BTreeMap<String, String>,
    launch_elsewhere: Vec<Instance>,
    lose_next_answer: bool,
    describe_lag: u32,
    hidden: HashMap<InstanceId, u32>,
    instances: BTreeMap<InstanceId, Instance>,
    requests: BTreeMap<SpotRequestId, SpotRequest>,
    tokens: HashMap<String, (LaunchSpec, InstanceId)>,
    errors: HashMap<&'static str, VecDeque<CloudError>>,
    calls: Vec<String>,
    next_id: u64,
}

/// An in-memory cloud. Instances launch `pending` and are `running` on the next describe.
#[derive(Debug, Default)]
pub struct FakeCloud {
    state: Mutex<State>,
}

impl FakeCloud {
    /// A fake region with the given zones and no prices.
    pub fn new(zones: &[&str]) -> Self {
        let fake = Self::default();
        fake.lock().zones = zones.iter().map(|z| (*z).to_owned()).collect();
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not hide this test's result.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the spot price of `instance_type` in `zone`.
    pub fn set_price(&self, instance_type: &str, zone: &str, price: f64) {
        self.lock()
            .prices
            .insert((instance_type.to_owned(), zone.to_owned()), price);
    }

    /// Declares a subnet in `zone`.
    pub fn add_subnet(&self, subnet_id: &str, zone: &str) {
        self.lock()
            .subnets
            .insert(subnet_id.to_owned(), zone.to_owned());
    }

    /// On the next RunInstances, also makes `instance` appear, as if another
    /// machine launched it at the same moment (a race).
    pub fn launch_elsewhere_during_next_launch(&self, instance: Instance) {
        self.lock().launch_elsewhere.push(instance);
    }

    /// The next RunInstances launches, but its answer is "lost": the caller
    /// gets an `Unreachable` error, as when a connection drops mid-call.
    pub fn lose_next_launch_answer(&self) {
        self.lock().lose_next_answer = true;
    }

    /// New instances stay invisible to the next `n` describes, as AWS's
    /// eventual consistency can make them right after RunInstances.
    pub fn set_describe_lag(&self, n: u32) {
        self.lock().describe_lag = n;
    }

    /// Makes the next call of `operation` (e.g. `"RunInstances"`) fail with `code`.
    pub fn fail_next(&self, operation: &'static str, code: &str) {
        self.lock()
            .errors
            .entry(operation)
            .or_default()
            .push_back(CloudError::from_code(
                operation,
                code,
                "injected by FakeCloud",
            ));
    }

    /// Every call made so far, as `"Operation"` strings in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// How many calls of `operation` were made.
    pub fn count(&self, operation: &str) -> usize {
        self.lock().calls.iter().filter(|c| *c == operation).count()
    }

    /// Every instance ever launched, in any state.
    pub fn all_instances(&self) -> Vec<Instance> {
        self.lock().instances.values().cloned().collect()
    }

    /// Every spot request ever made, in any state.
    pub fn all_spot_requests(&self) -> Vec<SpotRequest> {
        self.lock().requests.values().cloned().collect()
    }

    /// Adds an instance made "elsewhere" (another machine, a crashed run).
    pub fn insert_instance(&self, instance: Instance) {
        self.lock().instances.insert(instance.id.clone(), instance);
    }

    /// Adds a spot request made "elsewhere".
    pub fn insert_spot_request(&self, request: SpotRequest) {
        self.lock().requests.insert(request.id.clone(), request);
    }

    /// Sets an instance's state, as AWS would on interruption.
    pub fn set_state(&self, id: &InstanceId, state: InstanceState) {
        if let Some(i) = self.lock().instances.get_mut(id) {
            i.state = state;
        }
    }

    fn enter(
        &self,
        operation: &'static str,
    ) -> Result<std::sync::MutexGuard<'_, State>, CloudError> {
        let mut s = self.lock();
        s.calls.push(operation.to_owned());
        if let Some(err) = s.errors.get_mut(operation).and_then(VecDeque::pop_front) {
            return Err(err);
        }
        Ok(s)
    }
}

#[async_trait]
impl Cloud for FakeCloud {
    async fn zones(&self) -> Result<Vec<String>, CloudError> {
        Ok(self.enter("DescribeAvailabilityZones")?.zones.clone())
    }

    async fn resolve_image(&self, image: &ImageRef) -> Result<ImageId, CloudError> {
        let _s = self.enter("ResolveImage")?;
        // Aliases resolve to a fixed id derived from their text.
        Ok(match image {
            ImageRef::Id(id) => id.clone(),
            other => ImageId::new(format!(
                "ami-fake-{}",
                other.to_string().replace([':', '.'], "-")
            )),
        })
    }

    async fn subnet_zone(&self, subnet_id: &str) -> Result<String, CloudError> {
        let s = self.enter("DescribeSubnets")?;
        s.subnets.get(subnet_id).cloned().ok_or_else(|| {
            CloudError::from_code(
                "DescribeSubnets",
                "InvalidSubnetID.NotFound",
                format!("subnet {subnet_id} not found"),
            )
        })
    }

    async fn spot_prices(
        &self,
        instance_types: &[String],
        zones: &[String],
    ) -> Result<Vec<SpotPrice>, CloudError> {
        let s = self.enter("DescribeSpotPriceHistory")?;
        Ok(s.prices
            .iter()
            .filter(|((t, z), _)| {
                instance_types.contains(t) && (zones.is_empty() || zones.contains(z))
            })
            .map(|((t, z), p)| SpotPrice {
                instance_type: t.clone(),
                zone: z.clone(),
                price: *p,
            })
            .collect())
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError> {
        let mut s = self.enter("RunInstances")?;
        if let Some((first, id)) = s.tokens.get(&spec.client_token) {
            if first != spec {
                return Err(CloudError::from_code(
                    "RunInstances",
                    "IdempotentParameterMismatch",
                    "client token reused with other parameters",
                ));
            }
            let id = id.clone();
            return s.instances.get(&id).cloned().ok_or_else(|| {
                CloudError::other("RunInstances", ErrorKind::Other, "fake lost an instance")
            });
        }
        for other in std::mem::take(&mut s.launch_elsewhere) {
            s.instances.insert(other.id.clone(), other);
        }
        s.next_id += 1;
        let n = s.next_id;
        let id = InstanceId::new(format!("i-{n:017x}"));
        let zone = spec.zone.clone().or_else(|| s.zones.first().cloned());
        let spot_request_id =
            (spec.market == Market::Spot).then(|| SpotRequestId::new(format!("sir-{n:08x}")));
        if let Some(rid) = &spot_request_id {
            s.requests.insert(
                rid.clone(),
                SpotRequest {
                    id: rid.clone(),
                    state: SpotRequestState::Active,
                    instance_id: Some(id.clone()),
                    instance_type: Some(spec.instance_type.clone()),
                    tags: spec.tags.clone(),
                },
            );
        }
        let instance = Instance {
            id: id.clone(),
            state: InstanceState::Pending,
            instance_type: spec.instance_type.clone(),
            zone,
            market: spec.market,
            spot_request_id,
            public_ip: Some(format!("198.51.100.{}", n % 250)),
            private_ip: Some(format!("10.0.0.{}", n % 250)),
            launched_at: Some(SystemTime::now()),
            image_id: Some(spec.image_id.clone()),
            subnet_id: spec.subnet_id.clone(),
            vpc_id: None,
            tags: spec.tags.clone(),
        };
        s.instances.insert(id.clone(), instance.clone());
        s.tokens
            .insert(spec.client_token.clone(), (spec.clone(), id.clone()));
        let lag = s.describe_lag;
        if lag > 0 {
            s.hidden.insert(id, lag);
        }
        if std::mem::take(&mut s.lose_next_answer) {
            return Err(CloudError::other(
                "RunInstances",
                ErrorKind::Unreachable,
                "connection reset (injected by FakeCloud)",
            ));
        }
        Ok(instance)
    }

    async fn instances(&self, filter: &TagFilter) -> Result<Vec<Instance>, CloudError> {
        let mut s = self.enter("DescribeInstances")?;
        let hidden = tick_hidden(&mut s);
        let mut out = Vec::new();
        for i in s.instances.values_mut() {
            if hidden.contains(&i.id) {
                continue;
            }
            let seen = i.clone();
            advance(i);
            if filter.matches(&seen.tags) {
                out.push(seen);
            }
        }
        Ok(out)
    }

    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>, CloudError> {
        let mut s = self.enter("DescribeInstances")?;
        if tick_hidden(&mut s).contains(id) {
            return Ok(None);
        }
        Ok(s.instances.get_mut(id).map(|i| {
            let seen = i.clone();
            advance(i);
            seen
        }))
    }

    async fn spot_requests(&self, filter: &TagFilter) -> Result<Vec<SpotRequest>, CloudError> {
        let s = self.enter("DescribeSpotInstanceRequests")?;
        Ok(s.requests
            .values()
            .filter(|r| filter.matches(&r.tags))
            .cloned()
            .collect())
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        let mut s = self.enter("TerminateInstances")?;
        for id in ids {
            match s.instances.get_mut(id) {
                Some(i) if !i.state.is_gone() => i.state = InstanceState::ShuttingDown,
                Some(_) => {}
                None => {
                    return Err(CloudError::from_code(
                        "TerminateInstances",
                        "InvalidInstanceID.NotFound",
                        format!("The instance ID '{id}' does not exist"),
                    ));
                }
            }
            // A one-time request closes when its instance ends.
            for r in s.requests.values_mut() {
                if r.instance_id.as_ref() == Some(id) && r.state == SpotRequestState::Active {
                    r.state = SpotRequestState::Closed;
                }
            }
        }
        Ok(())
    }

    async fn cancel_spot_requests(&self, ids: &[SpotRequestId]) -> Result<(), CloudError> {
        let mut s = self.enter("CancelSpotInstanceRequests")?;
        for id in ids {
            if let Some(r) = s.requests.get_mut(id) {
                r.state = SpotRequestState::Cancelled;
            }
        }
        Ok(())
    }

    async fn tag(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        let mut s = self.enter("CreateTags")?;
        for rid in resource_ids {
            if let Some(i) = s.instances.get_mut(&InstanceId::new(rid.as_str())) {
                i.tags.extend(tags.iter().cloned());
            }
            if let Some(r) = s.requests.get_mut(&SpotRequestId::new(rid.as_str())) {
                r.tags.extend(tags.iter().cloned());
            }
        }
        Ok(())
    }
}

/// Counts one describe against every hidden instance; returns those still hidden.
fn tick_hidden(s: &mut State) -> Vec<InstanceId> {
    let mut still = Vec::new();
    s.hidden.retain(|id, n| {
        *n -= 1;
        still.push(id.clone());
        *n > 0
    });
    still
}

/// Moves an instance one step along its lifecycle, as successive describes on AWS would show.
fn advance(i: &mut Instance) {
    i.state = match i.state {
        InstanceState::Pending => InstanceState::Running,
        InstanceState::ShuttingDown => InstanceState::Terminated,
        InstanceState::Stopping => InstanceState::Stopped,
        other => other,
    };
}
