//! `FakeCloud`: an in-memory [`Cloud`] for behaviour tests. Unlike the emulator it
//! honours client tokens (same token and parameters → same instance; other
//! parameters → `IdempotentParameterMismatch`), lets a test set a price per
//! (type, zone), injects errors per operation, and logs every call.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use async_trait::async_trait;

mod images;
mod network;
mod pricing;
mod queue;
pub use queue::FakeQueue;

use crate::cloud::{Compute, Storage};
use crate::error::{CloudError, ErrorKind};
use crate::model::{
    DnsRecord, Image, ImageId, ImageVolumes, Instance, InstanceId, InstanceState, LaunchSpec,
    Market, RecordType, Snapshot, SnapshotId, SpotRequest, SpotRequestId, SpotRequestState,
    TagFilter, Volume, VolumeId, fqdn,
};

#[derive(Debug, Default)]
struct State {
    zones: Vec<String>,
    prices: BTreeMap<(String, String), f64>,
    on_demand: BTreeMap<String, f64>,
    scores: BTreeMap<String, u8>,
    security_groups: Vec<(String, String)>,
    subnets: BTreeMap<String, String>,
    launch_elsewhere: Vec<Instance>,
    lose_next_answer: bool,
    volumes: BTreeMap<VolumeId, Volume>,
    snapshots: BTreeMap<SnapshotId, Snapshot>,
    images: BTreeMap<ImageId, Image>,
    image_volumes: BTreeMap<ImageId, ImageVolumes>,
    dns_zones: BTreeMap<(String, bool), String>,
    records: BTreeMap<(String, String, RecordType), DnsRecord>,
    addresses: BTreeMap<String, InstanceId>,
    describe_lag: u32,
    copies_pending: bool,
    hidden: HashMap<InstanceId, u32>,
    instances: BTreeMap<InstanceId, Instance>,
    requests: BTreeMap<SpotRequestId, SpotRequest>,
    tokens: HashMap<String, (LaunchSpec, u32, Vec<InstanceId>)>,
    refusals: BTreeMap<(String, String, Market), &'static str>,
    errors: HashMap<&'static str, VecDeque<CloudError>>,
    calls: Vec<String>,
    next_id: u64,
    delays: HashMap<&'static str, std::time::Duration>,
}

impl State {
    /// A new pending instance (with its spot request) as RunInstances makes it.
    fn new_instance(&mut self, spec: &LaunchSpec, zone: Option<String>) -> Instance {
        self.next_id += 1;
        let n = self.next_id;
        let id = InstanceId::new(format!("i-{n:017x}"));
        let spot_request_id =
            (spec.market == Market::Spot).then(|| SpotRequestId::new(format!("sir-{n:08x}")));
        if let Some(rid) = &spot_request_id {
            self.requests.insert(
                rid.clone(),
                SpotRequest {
                    id: rid.clone(),
                    state: SpotRequestState::Active,
                    instance_id: Some(id.clone()),
                    instance_type: Some(spec.instance_type.clone()),
                    status: None,
                    tags: spec.tags.clone(),
                },
            );
        }
        let instance = Instance {
            id: id.clone(),
            state: InstanceState::Pending,
            instance_type: spec.instance_type.clone(),
            zone: zone.clone(),
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
        self.instances.insert(id.clone(), instance.clone());
        let lag = self.describe_lag;
        if lag > 0 {
            self.hidden.insert(id, lag);
        }
        instance
    }
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

    /// Sets the placement score AWS gives `zone`.
    pub fn set_score(&self, zone: &str, score: u8) {
        self.lock().scores.insert(zone.to_owned(), score);
    }

    /// Makes snapshots copied into this fake `pending` (as a copy across
    /// regions is on AWS for a while) until called again with `false`,
    /// which completes them.
    pub fn set_copies_pending(&self, pending: bool) {
        let mut s = self.lock();
        s.copies_pending = pending;
        if !pending {
            for snap in s.snapshots.values_mut() {
                if snap.state == "pending" {
                    snap.state = "completed".into();
                }
            }
        }
    }

    /// Sets the spot price of `instance_type` in `zone`.
    pub fn set_price(&self, instance_type: &str, zone: &str, price: f64) {
        self.lock()
            .prices
            .insert((instance_type.to_owned(), zone.to_owned()), price);
    }

    /// Makes every launch of `instance_type` in `zone` on `market` fail with
    /// the EC2 error `code` (e.g. `InsufficientInstanceCapacity`,
    /// `MaxSpotInstanceCountExceeded`) until [`FakeCloud::accept`].
    pub fn refuse(&self, instance_type: &str, zone: &str, market: Market, code: &'static str) {
        self.lock()
            .refusals
            .insert((instance_type.to_owned(), zone.to_owned(), market), code);
    }

    /// Lifts every [`FakeCloud::refuse`] rule.
    pub fn accept(&self) {
        self.lock().refusals.clear();
    }

    /// Every distinct launch asked for (one per client token).
    pub fn launch_specs(&self) -> Vec<LaunchSpec> {
        self.lock()
            .tokens
            .values()
            .map(|(spec, _, _)| spec.clone())
            .collect()
    }

    /// Which volumes `CreateImage` was asked to carry into `image`.
    pub fn image_volumes(&self, image: &ImageId) -> Option<ImageVolumes> {
        self.lock().image_volumes.get(image).copied()
    }

    /// Declares a Route53 hosted zone; returns its id.
    pub fn add_dns_zone(&self, name: &str) -> String {
        self.add_zone(name, false)
    }

    /// Adds a private hosted zone (beside a public one of the same name, say); returns its id.
    pub fn add_private_dns_zone(&self, name: &str) -> String {
        self.add_zone(name, true)
    }

    fn add_zone(&self, name: &str, private: bool) -> String {
        let mut s = self.lock();
        let id = format!("Z{:08}", s.dns_zones.len() + 1);
        s.dns_zones.insert((fqdn(name), private), id.clone());
        id
    }

    /// Every volume, in any state.
    pub fn all_volumes(&self) -> Vec<Volume> {
        self.lock().volumes.values().cloned().collect()
    }

    /// Adds a security group `name` with id `id` (in the one VPC FakeCloud has).
    pub fn add_security_group(&self, name: &str, id: &str) {
        self.lock()
            .security_groups
            .push((name.to_owned(), id.to_owned()));
    }

    /// Sets the on-demand price of a type (absent: the Price List has none).
    pub fn set_on_demand_price(&self, instance_type: &str, price: f64) {
        self.lock()
            .on_demand
            .insert(instance_type.to_owned(), price);
    }

    /// Every DNS record set, with its type.
    pub fn all_records(&self) -> Vec<(RecordType, DnsRecord)> {
        self.lock()
            .records
            .iter()
            .map(|((_, _, kind), r)| (*kind, r.clone()))
            .collect()
    }

    /// Puts a record set into a zone as someone else would (no ownership mark).
    pub fn put_record(&self, zone_id: &str, kind: RecordType, name: &str, values: &[&str]) {
        self.lock().records.insert(
            (zone_id.to_owned(), fqdn(name), kind),
            DnsRecord {
                name: fqdn(name),
                values: values.iter().map(|v| (*v).to_owned()).collect(),
                ttl: 300,
            },
        );
    }

    /// Puts an Elastic IP allocation on an instance (made "elsewhere").
    pub fn set_address(&self, allocation_id: &str, instance: &InstanceId) {
        self.lock()
            .addresses
            .insert(allocation_id.to_owned(), instance.clone());
    }

    /// Which instance an Elastic IP allocation is on.
    pub fn address_of(&self, allocation_id: &str) -> Option<InstanceId> {
        self.lock().addresses.get(allocation_id).cloned()
    }

    fn next(&self, s: &mut State) -> u64 {
        s.next_id += 1;
        s.next_id
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

    /// Hides an existing instance from the next `n` describes (listings and
    /// by id), as AWS's eventual consistency can right after a launch.
    pub fn hide(&self, id: &InstanceId, n: u32) {
        self.lock().hidden.insert(id.clone(), n);
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

    /// Every later call of `operation` takes `delay` before it answers (an
    /// image that stays pending for minutes, an endpoint that hangs).
    pub fn set_delay(&self, operation: &'static str, delay: std::time::Duration) {
        self.lock().delays.insert(operation, delay);
    }

    /// Every later call of an operation without a delay of its own takes
    /// `latency` (a round trip to AWS, for benchmarks).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().delays.insert("*", latency);
    }

    async fn pause(&self, operation: &'static str) {
        let delay = {
            let s = self.lock();
            s.delays
                .get(operation)
                .or_else(|| s.delays.get("*"))
                .copied()
        };
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
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
impl Compute for FakeCloud {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError> {
        let mut launched = self.launch_many(spec, 1).await?;
        launched.pop().ok_or_else(|| {
            CloudError::other("RunInstances", ErrorKind::Other, "fake launched nothing")
        })
    }

    async fn launch_many(
        &self,
        spec: &LaunchSpec,
        count: u32,
    ) -> Result<Vec<Instance>, CloudError> {
        self.pause("RunInstances").await;
        let mut s = self.enter("RunInstances")?;
        if let Some((first, first_count, ids)) = s.tokens.get(&spec.client_token) {
            if first != spec || *first_count != count {
                return Err(CloudError::from_code(
                    "RunInstances",
                    "IdempotentParameterMismatch",
                    "client token reused with other parameters",
                ));
            }
            return ids
                .iter()
                .map(|id| {
                    s.instances.get(id).cloned().ok_or_else(|| {
                        CloudError::other("RunInstances", ErrorKind::Other, "fake lost an instance")
                    })
                })
                .collect();
        }
        // As on AWS, a subnet places the instance in its zone.
        let zone = spec
            .subnet_id
            .as_ref()
            .and_then(|sub| s.subnets.get(sub).cloned())
            .or_else(|| spec.zone.clone())
            .or_else(|| s.zones.first().cloned());
        if let Some(code) = zone.as_ref().and_then(|z| {
            s.refusals
                .get(&(spec.instance_type.clone(), z.clone(), spec.market))
                .copied()
        }) {
            return Err(CloudError::from_code(
                "RunInstances",
                code,
                "refused by FakeCloud::refuse",
            ));
        }
        for other in std::mem::take(&mut s.launch_elsewhere) {
            s.instances.insert(other.id.clone(), other);
        }
        let mut launched = Vec::new();
        for _ in 0..count {
            launched.push(s.new_instance(spec, zone.clone()));
        }
        s.tokens.insert(
            spec.client_token.clone(),
            (
                spec.clone(),
                count,
                launched.iter().map(|i| i.id.clone()).collect(),
            ),
        );
        if std::mem::take(&mut s.lose_next_answer) {
            return Err(CloudError::other(
                "RunInstances",
                ErrorKind::Unreachable,
                "connection reset (injected by FakeCloud)",
            ));
        }
        Ok(launched)
    }

    async fn instances(&self, filter: &TagFilter) -> Result<Vec<Instance>, CloudError> {
        self.pause("DescribeInstances").await;
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
        self.pause("DescribeInstances").await;
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
        self.pause("DescribeSpotInstanceRequests").await;
        let s = self.enter("DescribeSpotInstanceRequests")?;
        Ok(s.requests
            .values()
            .filter(|r| filter.matches(&r.tags))
            .cloned()
            .collect())
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        self.pause("TerminateInstances").await;
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
            // Volumes attached after launch are detached (and kept) when it ends.
            for v in s.volumes.values_mut() {
                if v.attachments.iter().any(|(i, _)| i == id) {
                    v.attachments.clear();
                    v.state = "available".into();
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
        self.pause("CancelSpotInstanceRequests").await;
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
        self.pause("CreateTags").await;
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

    async fn untag(&self, resource_ids: &[String], keys: &[&str]) -> Result<(), CloudError> {
        self.pause("DeleteTags").await;
        let mut s = self.enter("DeleteTags")?;
        for rid in resource_ids {
            if let Some(i) = s.instances.get_mut(&InstanceId::new(rid.as_str())) {
                i.tags.retain(|k, _| !keys.contains(&k.as_str()));
            }
            if let Some(v) = s.volumes.get_mut(&VolumeId::new(rid.as_str())) {
                v.tags.retain(|k, _| !keys.contains(&k.as_str()));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for FakeCloud {
    async fn volumes(&self, filter: &TagFilter) -> Result<Vec<Volume>, CloudError> {
        self.pause("DescribeVolumes").await;
        let s = self.enter("DescribeVolumes")?;
        Ok(s.volumes
            .values()
            .filter(|v| filter.matches(&v.tags))
            .cloned()
            .collect())
    }

    async fn volume(&self, id: &VolumeId) -> Result<Option<Volume>, CloudError> {
        self.pause("DescribeVolumes").await;
        Ok(self.enter("DescribeVolumes")?.volumes.get(id).cloned())
    }

    async fn create_volume(
        &self,
        zone: &str,
        size_gb: Option<i32>,
        kind: &str,
        snapshot: Option<&SnapshotId>,
        tags: &[(String, String)],
    ) -> Result<Volume, CloudError> {
        self.pause("CreateVolume").await;
        let mut s = self.enter("CreateVolume")?;
        let n = self.next(&mut s);
        let v = Volume {
            id: VolumeId::new(format!("vol-{n:017x}")),
            zone: zone.to_owned(),
            size_gb: size_gb.unwrap_or(8),
            kind: kind.to_owned(),
            state: "available".into(),
            attachments: Vec::new(),
            snapshot_id: snapshot.cloned(),
            tags: tags.iter().cloned().collect(),
        };
        s.volumes.insert(v.id.clone(), v.clone());
        Ok(v)
    }

    async fn attach_volume(
        &self,
        volume: &VolumeId,
        instance: &InstanceId,
        device: &str,
    ) -> Result<Volume, CloudError> {
        self.pause("AttachVolume").await;
        let mut s = self.enter("AttachVolume")?;
        let zone = s.instances.get(instance).and_then(|i| i.zone.clone());
        let v = s.volumes.get_mut(volume).ok_or_else(|| {
            CloudError::from_code(
                "AttachVolume",
                "InvalidVolume.NotFound",
                format!("volume {volume} does not exist"),
            )
        })?;
        if zone.as_deref() != Some(v.zone.as_str()) {
            return Err(CloudError::from_code(
                "AttachVolume",
                "InvalidVolume.ZoneMismatch",
                "volume and instance are in different zones",
            ));
        }
        if !v.attachments.is_empty() {
            return Err(CloudError::from_code(
                "AttachVolume",
                "VolumeInUse",
                format!("{volume} is attached already"),
            ));
        }
        v.attachments.push((instance.clone(), device.to_owned()));
        v.state = "in-use".into();
        Ok(v.clone())
    }

    async fn detach_volume(
        &self,
        volume: &VolumeId,
        _instance: &InstanceId,
    ) -> Result<Volume, CloudError> {
        self.pause("DetachVolume").await;
        let mut s = self.enter("DetachVolume")?;
        let v = s.volumes.get_mut(volume).ok_or_else(|| {
            CloudError::from_code(
                "DetachVolume",
                "InvalidVolume.NotFound",
                format!("volume {volume} does not exist"),
            )
        })?;
        v.attachments.clear();
        v.state = "available".into();
        Ok(v.clone())
    }

    async fn delete_volume(&self, volume: &VolumeId) -> Result<(), CloudError> {
        self.pause("DeleteVolume").await;
        let mut s = self.enter("DeleteVolume")?;
        if let Some(v) = s.volumes.get(volume)
            && !v.attachments.is_empty()
        {
            return Err(CloudError::from_code(
                "DeleteVolume",
                "VolumeInUse",
                format!("{volume} is attached"),
            ));
        }
        s.volumes.remove(volume);
        Ok(())
    }

    async fn snapshot_volume(
        &self,
        volume: &VolumeId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        self.pause("CreateSnapshot").await;
        let mut s = self.enter("CreateSnapshot")?;
        let n = self.next(&mut s);
        let id = SnapshotId::new(format!("snap-{n:017x}"));
        s.snapshots.insert(
            id.clone(),
            Snapshot {
                id: id.clone(),
                volume_id: Some(volume.clone()),
                state: "completed".into(),
                started_at: Some(format!("{n:020}")),
                tags: tags.iter().cloned().collect(),
            },
        );
        Ok(id)
    }

    /// The copy is completed at once unless [`FakeCloud::set_copies_pending`];
    /// the source, in another region, is not this fake's to see.
    async fn copy_snapshot(
        &self,
        source_region: &str,
        source: &SnapshotId,
        tags: &[(String, String)],
    ) -> Result<SnapshotId, CloudError> {
        self.pause("CopySnapshot").await;
        let mut s = self.enter("CopySnapshot")?;
        let n = self.next(&mut s);
        let id = SnapshotId::new(format!("snap-{n:017x}"));
        let mut tags: BTreeMap<String, String> = tags.iter().cloned().collect();
        tags.insert(
            "fake:copied-from".into(),
            format!("{source_region}/{source}"),
        );
        let state = if s.copies_pending {
            "pending"
        } else {
            "completed"
        };
        s.snapshots.insert(
            id.clone(),
            Snapshot {
                id: id.clone(),
                volume_id: None,
                state: state.into(),
                started_at: Some(format!("{n:020}")),
                tags,
            },
        );
        Ok(id)
    }

    async fn snapshots(&self, filter: &TagFilter) -> Result<Vec<Snapshot>, CloudError> {
        self.pause("DescribeSnapshots").await;
        let s = self.enter("DescribeSnapshots")?;
        let mut all: Vec<Snapshot> = s
            .snapshots
            .values()
            .filter(|x| filter.matches(&x.tags))
            .cloned()
            .collect();
        all.sort_by(|a, b| b.started_at.cmp(&a.started_at));
        Ok(all)
    }

    async fn delete_snapshot(&self, id: &SnapshotId) -> Result<(), CloudError> {
        self.pause("DeleteSnapshot").await;
        self.enter("DeleteSnapshot")?.snapshots.remove(id);
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
