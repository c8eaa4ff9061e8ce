//! Instances and spot requests: RunInstances, DescribeInstances,
//! DescribeSpotInstanceRequests, TerminateInstances, CancelSpotInstanceRequests, CreateTags.

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceInterruptionBehavior, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceType, MarketType, Placement, ResourceType,
    SpotInstanceType, SpotMarketOptions, Tag, TagSpecification, VolumeType,
};
use base64::Engine as _;

use async_trait::async_trait;

use super::{AwsCloud, absent, sdk_error, tag_filters, tag_map};
use crate::error::{CloudError, ErrorKind};
use crate::model::{
    ImageId, Instance, InstanceId, InstanceState, LaunchSpec, Market, MetadataTokens, SpotRequest,
    SpotRequestId, SpotRequestState, TagFilter,
};
use crate::prelude::*;

impl AwsCloud {
    /// The instance's console output (what the kernel and init printed),
    /// the latest AWS has; `None` when there is none yet.
    pub async fn console_output(&self, id: &InstanceId) -> Result<Option<String>, CloudError> {
        const OP: &str = "GetConsoleOutput";
        let out = self
            .ec2
            .get_console_output()
            .instance_id(id.as_str())
            .latest(true)
            .send()
            .await
            .map_err(|e| sdk_error(OP, e))?;
        match out.output() {
            None | Some("") => Ok(None),
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(|bytes| Some(String::from_utf8_lossy(&bytes).into_owned()))
                .map_err(|e| {
                    CloudError::other(OP, ErrorKind::Other, format!("undecodable output: {e}"))
                }),
        }
    }

    /// Reboots instances (`RebootInstances`): the same instance, addresses kept.
    pub async fn reboot(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        self.ec2
            .reboot_instances()
            .set_instance_ids(Some(ids.iter().map(|i| i.to_string()).collect()))
            .send()
            .await
            .map_err(|e| sdk_error("RebootInstances", e))?;
        Ok(())
    }

    /// Stops instances (on-demand, or persistent spot); their EBS root stays.
    pub async fn stop_instances(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        self.ec2
            .stop_instances()
            .set_instance_ids(Some(ids.iter().map(|i| i.to_string()).collect()))
            .send()
            .await
            .map_err(|e| sdk_error("StopInstances", e))?;
        Ok(())
    }

    /// Starts stopped instances.
    pub async fn start_instances(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        self.ec2
            .start_instances()
            .set_instance_ids(Some(ids.iter().map(|i| i.to_string()).collect()))
            .send()
            .await
            .map_err(|e| sdk_error("StartInstances", e))?;
        Ok(())
    }

    /// Launches like [`Compute::launch`](crate::Compute::launch), letting `customize`
    /// set RunInstances fields the typed [`LaunchSpec`] lacks (the escape hatch:
    /// metadata options, placement groups, capacity reservations …).
    pub async fn launch_with(
        &self,
        spec: &LaunchSpec,
        customize: impl FnOnce(RunInstancesFluentBuilder) -> RunInstancesFluentBuilder,
    ) -> Result<Instance, CloudError> {
        let launched = self
            .run_instances(spec, |req| customize(req.min_count(1).max_count(1)))
            .await?;
        launched.into_iter().next().ok_or_else(|| {
            CloudError::other(
                "RunInstances",
                ErrorKind::Other,
                "AWS accepted the launch but returned no instance",
            )
        })
    }

    async fn run_instances(
        &self,
        spec: &LaunchSpec,
        customize: impl FnOnce(RunInstancesFluentBuilder) -> RunInstancesFluentBuilder,
    ) -> Result<Vec<Instance>, CloudError> {
        const OP: &str = "RunInstances";
        let tag_specs = tag_specifications(spec);
        let mut req = self
            .ec2
            .run_instances()
            .image_id(spec.image_id.as_str())
            .instance_type(InstanceType::from(spec.instance_type.as_str()))
            // Counts are set by the caller, always explicitly (the emulator
            // launches MinCount).
            .client_token(&spec.client_token)
            .set_tag_specifications((!tag_specs.is_empty()).then_some(tag_specs))
            .set_key_name(spec.key_name.clone())
            .set_subnet_id(spec.subnet_id.clone())
            // IMDSv2 only unless asked: a request forged through the box
            // (SSRF) cannot read the instance role's credentials without a
            // session token.
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(match spec.metadata_tokens {
                        MetadataTokens::Required => HttpTokensState::Required,
                        MetadataTokens::Optional => HttpTokensState::Optional,
                    })
                    .build(),
            );
        if !spec.security_group_ids.is_empty() {
            req = req.set_security_group_ids(Some(spec.security_group_ids.clone()));
        }
        if let (Some(zone), None) = (&spec.zone, &spec.subnet_id) {
            req = req.placement(Placement::builder().availability_zone(zone).build());
        }
        if let Some(data) = &spec.user_data {
            req = req.user_data(base64::engine::general_purpose::STANDARD.encode(data));
        }
        if spec.market == Market::Spot {
            // One-time, terminated on interruption; MaxPrice only with
            // price_cap = "aws" (else the caller holds the ceiling).
            req = req.instance_market_options(spot_options(spec));
        }
        if let Some(root) = &spec.root_volume {
            let device = self.root_device_name(&spec.image_id).await?;
            req = req.block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(root.size_gb)
                            .volume_type(VolumeType::from(root.kind.as_str()))
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(profile) = &spec.iam_instance_profile {
            req = req.iam_instance_profile(instance_profile(profile));
        }
        let out = customize(req).send().await.map_err(|e| sdk_error(OP, e))?;
        let launched: Vec<Instance> = out
            .instances()
            .iter()
            .filter_map(convert_instance)
            .collect();
        if launched.len() != out.instances().len() {
            return Err(CloudError::other(
                OP,
                ErrorKind::Other,
                "AWS returned an instance without an id",
            ));
        }
        Ok(launched)
    }
}

/// Tags at creation on the instance, its volumes and (spot) its request.
fn tag_specifications(spec: &LaunchSpec) -> Vec<TagSpecification> {
    let tags: Vec<Tag> = spec
        .tags
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let mut resources = vec![ResourceType::Instance, ResourceType::Volume];
    if spec.market == Market::Spot {
        resources.push(ResourceType::SpotInstancesRequest);
    }
    // AWS rejects a tag specification without tags.
    if tags.is_empty() {
        Vec::new()
    } else {
        resources
            .into_iter()
            .map(|r| {
                TagSpecification::builder()
                    .resource_type(r)
                    .set_tags(Some(tags.clone()))
                    .build()
            })
            .collect()
    }
}

/// One-time spot, terminated on interruption; `MaxPrice` only with `price_cap = "aws"`.
fn spot_options(spec: &LaunchSpec) -> InstanceMarketOptionsRequest {
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .set_max_price(spec.spot_max_price.map(|p| format!("{p}")))
                .build(),
        )
        .build()
}

/// An instance profile by ARN or by name.
fn instance_profile(profile: &str) -> IamInstanceProfileSpecification {
    let p = IamInstanceProfileSpecification::builder();
    let p = if profile.starts_with("arn:") {
        p.arn(profile)
    } else {
        p.name(profile)
    };
    p.build()
}

/// Converts an SDK instance; `None` when it lacks the fields every instance has.
pub(crate) fn convert_instance(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    let id = i.instance_id()?;
    let state = i
        .state()
        .and_then(|s| s.name())
        .and_then(|n| InstanceState::parse(n.as_str()))?;
    let market = match i.instance_lifecycle() {
        Some(l) if l.as_str() == "spot" => Market::Spot,
        _ => Market::OnDemand,
    };
    Some(Instance {
        id: InstanceId::new(id),
        state,
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_owned),
        market,
        spot_request_id: i
            .spot_instance_request_id()
            .filter(|s| !s.is_empty())
            .map(SpotRequestId::new),
        public_ip: i
            .public_ip_address()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        private_ip: i
            .private_ip_address()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        launched_at: i
            .launch_time()
            .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
        image_id: i.image_id().map(ImageId::new),
        subnet_id: i.subnet_id().filter(|s| !s.is_empty()).map(str::to_owned),
        vpc_id: i.vpc_id().filter(|s| !s.is_empty()).map(str::to_owned),
        tags: tag_map(i.tags()),
    })
}

#[async_trait]
impl Compute for AwsCloud {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Instance, CloudError> {
        self.launch_with(spec, |req| req).await
    }

    async fn launch_many(
        &self,
        spec: &LaunchSpec,
        count: u32,
    ) -> Result<Vec<Instance>, CloudError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        // MinCount = MaxCount: all or nothing, so a capacity error moves the
        // whole batch to the next offering instead of half-filling it.
        self.run_instances(spec, |req| req.min_count(count).max_count(count))
            .await
    }

    async fn instances(&self, filter: &TagFilter) -> Result<Vec<Instance>, CloudError> {
        const OP: &str = "DescribeInstances";
        let mut all = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .set_filters(Some(tag_filters(filter)))
            // The largest page: calls grow with pages, not instances.
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(out) = pages.next().await {
            let out = out.map_err(|e| sdk_error(OP, e))?;
            for reservation in out.reservations() {
                all.extend(reservation.instances().iter().filter_map(convert_instance));
            }
        }
        // Filter again client-side: cheap, and correct even where a filter is
        // ignored by an emulator.
        all.retain(|i| filter.matches(&i.tags));
        Ok(all)
    }

    async fn instance(&self, id: &InstanceId) -> Result<Option<Instance>, CloudError> {
        let res = self
            .ec2
            .describe_instances()
            .instance_ids(id.as_str())
            .send()
            .await;
        Ok(
            absent(res.map_err(|e| sdk_error("DescribeInstances", e)))?.and_then(|out| {
                out.reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .filter_map(convert_instance)
                    .find(|i| &i.id == id)
            }),
        )
    }

    async fn spot_requests(&self, filter: &TagFilter) -> Result<Vec<SpotRequest>, CloudError> {
        const OP: &str = "DescribeSpotInstanceRequests";
        let mut all = Vec::new();
        let mut pages = self
            .ec2
            .describe_spot_instance_requests()
            .set_filters(Some(tag_filters(filter)))
            // The largest page: calls grow with pages, not instances.
            .max_results(1000)
            .into_paginator()
            .send();
        while let Some(out) = pages.next().await {
            let out = out.map_err(|e| sdk_error(OP, e))?;
            for r in out.spot_instance_requests() {
                let Some(id) = r.spot_instance_request_id() else {
                    continue;
                };
                let Some(state) = r.state().and_then(|s| SpotRequestState::parse(s.as_str()))
                else {
                    continue;
                };
                all.push(SpotRequest {
                    id: SpotRequestId::new(id),
                    state,
                    instance_id: r
                        .instance_id()
                        .filter(|s| !s.is_empty())
                        .map(InstanceId::new),
                    instance_type: r
                        .launch_specification()
                        .and_then(|l| l.instance_type())
                        .map(|t| t.as_str().to_owned()),
                    status: r.status().and_then(|st| {
                        Some((
                            st.code()?.to_owned(),
                            st.message().unwrap_or_default().to_owned(),
                        ))
                    }),
                    tags: tag_map(r.tags()),
                });
            }
        }
        all.retain(|r| filter.matches(&r.tags));
        Ok(all)
    }

    async fn terminate(&self, ids: &[InstanceId]) -> Result<(), CloudError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(ids.iter().map(|i| i.as_str().to_owned()).collect()))
            .send()
            .await
            .map_err(|e| sdk_error("TerminateInstances", e))?;
        Ok(())
    }

    async fn cancel_spot_requests(&self, ids: &[SpotRequestId]) -> Result<(), CloudError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.ec2
            .cancel_spot_instance_requests()
            .set_spot_instance_request_ids(Some(
                ids.iter().map(|i| i.as_str().to_owned()).collect(),
            ))
            .send()
            .await
            .map_err(|e| sdk_error("CancelSpotInstanceRequests", e))?;
        Ok(())
    }

    async fn tag(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), CloudError> {
        if resource_ids.is_empty() || tags.is_empty() {
            return Ok(());
        }
        self.ec2
            .create_tags()
            .set_resources(Some(resource_ids.to_vec()))
            .set_tags(Some(
                tags.iter()
                    .map(|(k, v)| Tag::builder().key(k).value(v).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| sdk_error("CreateTags", e))?;
        Ok(())
    }

    /// Removes tag keys from resources.
    async fn untag(&self, resource_ids: &[String], keys: &[&str]) -> Result<(), CloudError> {
        if resource_ids.is_empty() || keys.is_empty() {
            return Ok(());
        }
        self.ec2
            .delete_tags()
            .set_resources(Some(resource_ids.to_vec()))
            .set_tags(Some(
                keys.iter()
                    .map(|k| Tag::builder().key(*k).build())
                    .collect(),
            ))
            .send()
            .await
            .map_err(|e| sdk_error("DeleteTags", e))?;
        Ok(())
    }
}
