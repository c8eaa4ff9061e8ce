//! What `AwsCloud` sends, checked below the SDK with aws-smithy-mocks: the
//! emulator does not show ClientToken, spot options or the spot request's tags.

use spotkeeper_cloud::prelude::*;
use std::collections::BTreeMap;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use aws_sdk_ec2::operation::run_instances::RunInstancesOutput;
use aws_sdk_ec2::types::Image as Ec2Image;
use aws_sdk_ec2::types::{Instance as Ec2Instance, InstanceState, InstanceStateName, ResourceType};
use aws_sdk_ssm::operation::get_parameter::{GetParameterError, GetParameterOutput};
use aws_sdk_ssm::types::Parameter;
use aws_sdk_ssm::types::error::ParameterNotFound;
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Arch, AwsCloud, ImageId, ImageRef, LaunchSpec, Market};

fn ec2_with(rules: &[&Rule]) -> Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        interceptor = interceptor.with_rule(r);
    }
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "mock"))
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .build();
    Client::from_conf(conf)
}

fn ssm_with(rules: &[&Rule]) -> aws_sdk_ssm::Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        interceptor = interceptor.with_rule(r);
    }
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "mock"))
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

fn ssm() -> aws_sdk_ssm::Client {
    ssm_with(&[])
}

fn route53() -> aws_sdk_route53::Client {
    let conf = aws_sdk_route53::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "mock"))
        .http_client(create_mock_http_client())
        .build();
    aws_sdk_route53::Client::from_conf(conf)
}

/// The values of a DescribeImages request's filter `name` (none when absent).
fn filter_values(
    r: &aws_sdk_ec2::operation::describe_images::DescribeImagesInput,
    name: &str,
) -> Vec<String> {
    r.filters()
        .iter()
        .find(|f| f.name() == Some(name))
        .map(|f| f.values().to_vec())
        .unwrap_or_default()
}

fn running() -> RunInstancesOutput {
    RunInstancesOutput::builder()
        .instances(
            Ec2Instance::builder()
                .instance_id("i-0123")
                .state(
                    InstanceState::builder()
                        .name(InstanceStateName::Pending)
                        .build(),
                )
                .build(),
        )
        .build()
}

fn spec(market: Market) -> LaunchSpec {
    LaunchSpec {
        image_id: ImageId::new("ami-1"),
        instance_type: "t3.micro".into(),
        market,
        zone: Some("us-east-1b".into()),
        subnet_id: None,
        security_group_ids: vec!["sg-1".into()],
        key_name: Some("k".into()),
        user_data: Some("hi".into()),
        tags: BTreeMap::from([(tags::BOX.to_owned(), "dev".to_owned())]),
        client_token: "sk-token".into(),
        root_volume: None,
        iam_instance_profile: None,
        spot_max_price: None,
        metadata_tokens: spotkeeper_cloud::MetadataTokens::Required,
    }
}

/// An image Canonical published: what DescribeImages answers for it.
fn canonical_image(id: &str, name: &str, created: &str) -> Ec2Image {
    Ec2Image::builder()
        .image_id(id)
        .owner_id(spotkeeper_cloud::CANONICAL_OWNER)
        .name(name)
        .creation_date(created)
        .build()
}

#[tokio::test]
async fn a_spot_launch_is_one_time_uncapped_tokened_and_tags_instance_volume_and_request() {
    let rule = mock!(Client::run_instances)
        .match_requests(|r| {
            let spot = r.instance_market_options().and_then(|m| m.spot_options());
            let kinds: Vec<&ResourceType> = r
                .tag_specifications()
                .iter()
                .filter_map(|t| t.resource_type())
                .collect();
            let all_tagged = r.tag_specifications().iter().all(|t| {
                t.tags()
                    .iter()
                    .any(|tag| tag.key() == Some(tags::BOX) && tag.value() == Some("dev"))
            });
            r.client_token() == Some("sk-token")
                && r.min_count() == Some(1)
                && r.max_count() == Some(1)
                && r.instance_market_options()
                    .and_then(|m| m.market_type())
                    .map(|m| m.as_str())
                    == Some("spot")
                && spot
                    .and_then(|s| s.spot_instance_type())
                    .map(|t| t.as_str())
                    == Some("one-time")
                && spot
                    .and_then(|s| s.instance_interruption_behavior())
                    .map(|b| b.as_str())
                    == Some("terminate")
                && spot.and_then(|s| s.max_price()).is_none()
                && kinds
                    == [
                        &ResourceType::Instance,
                        &ResourceType::Volume,
                        &ResourceType::SpotInstancesRequest,
                    ]
                && all_tagged
                && r.placement().and_then(|p| p.availability_zone()) == Some("us-east-1b")
                && r.user_data() == Some("aGk=")
                && r.security_group_ids() == ["sg-1"]
                && r.metadata_options()
                    .and_then(|m| m.http_tokens())
                    .map(|t| t.as_str())
                    == Some("required")
        })
        .then_output(running);
    let cloud = AwsCloud::from_clients(ec2_with(&[&rule]), ssm(), route53(), "us-east-1");
    let inst = cloud
        .launch(&spec(Market::Spot))
        .await
        .expect("the request matched the expected shape");
    assert_eq!(inst.id.as_str(), "i-0123");
    assert_eq!(rule.num_calls(), 1);
}

#[tokio::test]
async fn a_spot_launch_with_a_price_cap_sends_it_as_max_price() {
    let rule = mock!(Client::run_instances)
        .match_requests(|r| {
            r.instance_market_options()
                .and_then(|m| m.spot_options())
                .and_then(|s| s.max_price())
                == Some("0.02")
        })
        .then_output(running);
    let cloud = AwsCloud::from_clients(ec2_with(&[&rule]), ssm(), route53(), "us-east-1");
    let mut capped = spec(Market::Spot);
    capped.spot_max_price = Some(0.02);
    cloud.launch(&capped).await.expect("MaxPrice 0.02 sent");
    assert_eq!(rule.num_calls(), 1);
}

#[tokio::test]
async fn imdsv1_is_let_through_only_when_the_launch_asks_for_it() {
    let rule = mock!(Client::run_instances)
        .match_requests(|r| {
            r.metadata_options()
                .and_then(|m| m.http_tokens())
                .map(|t| t.as_str())
                == Some("optional")
        })
        .then_output(running);
    let cloud = AwsCloud::from_clients(ec2_with(&[&rule]), ssm(), route53(), "us-east-1");
    let mut v1 = spec(Market::Spot);
    v1.metadata_tokens = spotkeeper_cloud::MetadataTokens::Optional;
    cloud.launch(&v1).await.expect("HttpTokens optional sent");
    assert_eq!(rule.num_calls(), 1);
}

#[tokio::test]
async fn an_on_demand_launch_has_no_market_options_and_no_request_tags() {
    let rule = mock!(Client::run_instances)
        .match_requests(|r| {
            r.instance_market_options().is_none()
                && r.metadata_options()
                    .and_then(|m| m.http_tokens())
                    .map(|t| t.as_str())
                    == Some("required")
                && r.tag_specifications()
                    .iter()
                    .all(|t| t.resource_type() != Some(&ResourceType::SpotInstancesRequest))
        })
        .then_output(running);
    let cloud = AwsCloud::from_clients(ec2_with(&[&rule]), ssm(), route53(), "us-east-1");
    cloud
        .launch(&spec(Market::OnDemand))
        .await
        .expect("matched");
    assert_eq!(rule.num_calls(), 1);
}

#[test]
fn xenial_is_an_alias_of_16_04_whose_parameter_names_gp2() {
    assert_eq!(
        ImageRef::parse("ubuntu:xenial").expect("alias"),
        ImageRef::Ubuntu {
            release: "16.04".into(),
            arch: Arch::Amd64
        }
    );
    assert_eq!(
        ImageRef::parse("ubuntu:16.04"),
        ImageRef::parse("ubuntu:xenial")
    );
    assert_eq!(
        spotkeeper_cloud::ubuntu_parameter("16.04", Arch::Amd64),
        "/aws/service/canonical/ubuntu/server/16.04/stable/current/amd64/hvm/ebs-gp2/ami-id"
    );
    assert!(spotkeeper_cloud::ubuntu_parameter("22.04", Arch::Amd64).contains("/ebs-gp2/"));
    assert!(spotkeeper_cloud::ubuntu_parameter("23.10", Arch::Amd64).contains("/ebs-gp3/"));
}

#[tokio::test]
async fn latest_ubuntu_reads_canonicals_public_parameter() {
    let want = spotkeeper_cloud::ubuntu_parameter("24.04", Arch::Arm64);
    assert_eq!(
        want,
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
    );
    let param = mock!(aws_sdk_ssm::Client::get_parameter)
        .match_requests(move |r| r.name() == Some(want.as_str()))
        .then_output(|| {
            GetParameterOutput::builder()
                .parameter(Parameter::builder().name("x").value("ami-0noble").build())
                .build()
        });
    // No EC2 rule: a DescribeImages call would fail the test.
    let cloud = AwsCloud::from_clients(ec2_with(&[]), ssm_with(&[&param]), route53(), "us-east-1");
    let id = cloud
        .latest_ubuntu("24.04", Arch::Arm64)
        .await
        .expect("from SSM");
    assert_eq!(id.as_str(), "ami-0noble");
    assert_eq!(param.num_calls(), 1);
}

#[tokio::test]
async fn latest_ubuntu_falls_back_to_the_newest_canonical_image() {
    let missing = mock!(aws_sdk_ssm::Client::get_parameter).then_error(|| {
        // As the SDK parses it from AWS's answer: the code is in the metadata.
        let meta = aws_sdk_ssm::error::ErrorMetadata::builder()
            .code("ParameterNotFound")
            .build();
        GetParameterError::ParameterNotFound(ParameterNotFound::builder().meta(meta).build())
    });
    let images = mock!(Client::describe_images)
        .match_requests(|r| {
            let filter = |name: &str| filter_values(r, name);
            r.owners() == [spotkeeper_cloud::CANONICAL_OWNER]
                && filter("name") == ["ubuntu/images/hvm-ssd*/ubuntu-*-24.04-amd64-server-*"]
                && filter("architecture") == ["x86_64"]
        })
        .then_output(|| {
            let img = |id: &str, date: &str| {
                canonical_image(
                    id,
                    &format!("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-{id}"),
                    date,
                )
            };
            DescribeImagesOutput::builder()
                .images(img("ami-old", "2025-01-02T03:04:05.000Z"))
                .images(img("ami-new", "2026-10-01T00:00:00.000Z"))
                .images(img("ami-mid", "2026-02-01T00:00:00.000Z"))
                .build()
        });
    let cloud = AwsCloud::from_clients(
        ec2_with(&[&images]),
        ssm_with(&[&missing]),
        route53(),
        "us-east-1",
    );
    let id = cloud
        .latest_ubuntu("24.04", Arch::Amd64)
        .await
        .expect("fallback");
    assert_eq!(id.as_str(), "ami-new");
    assert_eq!((missing.num_calls(), images.num_calls()), (1, 1));
}

#[tokio::test]
async fn al2023_reads_its_public_parameter() {
    let param = mock!(aws_sdk_ssm::Client::get_parameter)
        .match_requests(|r| {
            r.name() == Some("/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64")
        })
        .then_output(|| {
            GetParameterOutput::builder()
                .parameter(Parameter::builder().value("ami-0al").build())
                .build()
        });
    let cloud = AwsCloud::from_clients(ec2_with(&[]), ssm_with(&[&param]), route53(), "us-east-1");
    let image = spotkeeper_cloud::ImageRef::parse("al2023:arm64").expect("alias");
    assert_eq!(
        cloud
            .resolve_image(&image)
            .await
            .expect("resolved")
            .as_str(),
        "ami-0al"
    );
}

#[tokio::test]
async fn describes_follow_next_token_through_every_page_in_1000_result_pages() {
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::types::{Reservation, Tag};
    fn page(id: &str, next: Option<&str>) -> DescribeInstancesOutput {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(
                        Ec2Instance::builder()
                            .instance_id(id)
                            .tags(Tag::builder().key(tags::OWNER).value("o").build())
                            .state(
                                InstanceState::builder()
                                    .name(InstanceStateName::Running)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .set_next_token(next.map(str::to_owned))
            .build()
    }
    let first = mock!(Client::describe_instances)
        .match_requests(|r| r.next_token().is_none() && r.max_results() == Some(1000))
        .then_output(|| page("i-1", Some("p2")));
    let second = mock!(Client::describe_instances)
        .match_requests(|r| r.next_token() == Some("p2") && r.max_results() == Some(1000))
        .then_output(|| page("i-2", None));
    let cloud = AwsCloud::from_clients(ec2_with(&[&first, &second]), ssm(), route53(), "us-east-1");
    let found = cloud
        .instances(&spotkeeper_cloud::TagFilter::default().with(tags::OWNER, "o"))
        .await
        .expect("describe");
    let ids: Vec<&str> = found.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["i-1", "i-2"]);
    assert_eq!(first.num_calls(), 1);
    assert_eq!(second.num_calls(), 1);
}

/// DescribeInstances of an instance whose root is /dev/sda1, with a data
/// volume at /dev/sdf and a persistent root at /dev/sdg attached.
fn instance_with_volumes() -> aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput {
    use aws_sdk_ec2::types::{EbsInstanceBlockDevice, InstanceBlockDeviceMapping, Reservation};
    let device = |name: &str, vol: &str| {
        InstanceBlockDeviceMapping::builder()
            .device_name(name)
            .ebs(EbsInstanceBlockDevice::builder().volume_id(vol).build())
            .build()
    };
    aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput::builder()
        .reservations(
            Reservation::builder()
                .instances(
                    Ec2Instance::builder()
                        .instance_id("i-0123456789abcdef0")
                        .root_device_name("/dev/sda1")
                        .block_device_mappings(device("/dev/sda1", "vol-root"))
                        .block_device_mappings(device("/dev/sdf", "vol-data"))
                        .block_device_mappings(device("/dev/sdg", "vol-persistent-root"))
                        .build(),
                )
                .build(),
        )
        .build()
}

/// What CreateImage asked to leave out (`NoDevice`), and to keep.
fn image_devices(
    r: &aws_sdk_ec2::operation::create_image::CreateImageInput,
) -> (Vec<String>, usize) {
    let left_out = r
        .block_device_mappings()
        .iter()
        .filter(|m| m.no_device() == Some(""))
        .filter_map(|m| m.device_name().map(str::to_owned))
        .collect();
    let kept = r
        .block_device_mappings()
        .iter()
        .filter(|m| m.no_device().is_none())
        .count();
    (left_out, kept)
}

async fn create_image_with(volumes: spotkeeper_cloud::ImageVolumes, want_left_out: &[&str]) {
    let want: Vec<String> = want_left_out.iter().map(|d| (*d).to_owned()).collect();
    let create = mock!(Client::create_image)
        .match_requests(move |r| {
            let kinds: Vec<&ResourceType> = r
                .tag_specifications()
                .iter()
                .filter_map(|t| t.resource_type())
                .collect();
            r.no_reboot() == Some(true)
                && kinds == [&ResourceType::Image, &ResourceType::Snapshot]
                && r.tag_specifications().iter().all(|t| {
                    t.tags()
                        .iter()
                        .any(|tag| tag.key() == Some(tags::OWNER) && tag.value() == Some("tester"))
                })
                && image_devices(r) == (want.clone(), 0)
        })
        .then_output(|| {
            aws_sdk_ec2::operation::create_image::CreateImageOutput::builder()
                .image_id("ami-0000000000000aaaa")
                .build()
        });
    let describe = mock!(Client::describe_images).then_output(|| {
        DescribeImagesOutput::builder()
            .images(
                Ec2Image::builder()
                    .image_id("ami-0000000000000aaaa")
                    .state(aws_sdk_ec2::types::ImageState::Available)
                    .build(),
            )
            .build()
    });
    let instance = mock!(Client::describe_instances).then_output(instance_with_volumes);
    let tag = mock!(Client::create_tags)
        .then_output(|| aws_sdk_ec2::operation::create_tags::CreateTagsOutput::builder().build());
    let cloud = AwsCloud::from_clients(
        ec2_with(&[&create, &describe, &instance, &tag]),
        ssm(),
        route53(),
        "us-east-1",
    );
    cloud
        .create_image(
            &spotkeeper_cloud::InstanceId::new("i-0123456789abcdef0"),
            "img",
            &[(tags::OWNER.to_owned(), "tester".to_owned())],
            volumes,
        )
        .await
        .expect("the request matched: image and snapshots tagged at creation, devices as asked");
    assert_eq!(create.num_calls(), 1);
}

#[tokio::test]
async fn an_image_tags_itself_and_its_snapshots_at_creation() {
    create_image_with(spotkeeper_cloud::ImageVolumes::All, &[]).await;
}

#[tokio::test]
async fn an_image_of_the_root_only_leaves_every_other_device_out_with_no_device() {
    create_image_with(
        spotkeeper_cloud::ImageVolumes::RootOnly,
        &["/dev/sdf", "/dev/sdg"],
    )
    .await;
}

/// A recorded `GetProducts` answer (trimmed to what is read) for t3.micro in us-east-1.
const T3_MICRO_PRODUCT: &str = r#"{"product":{"productFamily":"Compute Instance","attributes":{"instanceType":"t3.micro","regionCode":"us-east-1","operatingSystem":"Linux","tenancy":"Shared","preInstalledSw":"NA","capacitystatus":"Used"},"sku":"4Y5ZHJ5ZQHJ6B6VP"},"serviceCode":"AmazonEC2","terms":{"OnDemand":{"4Y5ZHJ5ZQHJ6B6VP.JRTCKXETXF":{"priceDimensions":{"4Y5ZHJ5ZQHJ6B6VP.JRTCKXETXF.6YS6EN2CT7":{"unit":"Hrs","endRange":"Inf","description":"$0.0104 per On Demand Linux t3.micro Instance Hour","appliesTo":[],"rateCode":"4Y5ZHJ5ZQHJ6B6VP.JRTCKXETXF.6YS6EN2CT7","beginRange":"0","pricePerUnit":{"USD":"0.0104000000"}}},"sku":"4Y5ZHJ5ZQHJ6B6VP","effectiveDate":"2026-11-01T00:00:00Z","offerTermCode":"JRTCKXETXF","termAttributes":{}}}},"version":"20261101000000","publicationDate":"2026-11-01T00:00:00Z"}"#;

fn pricing_with(rules: &[&Rule]) -> aws_sdk_pricing::Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        interceptor = interceptor.with_rule(r);
    }
    let conf = aws_sdk_pricing::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(spotkeeper_cloud::PRICING_REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "mock"))
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .build();
    aws_sdk_pricing::Client::from_conf(conf)
}

#[tokio::test]
async fn the_on_demand_price_asks_the_price_list_for_linux_shared_in_the_region() {
    use aws_sdk_pricing::operation::get_products::GetProductsOutput;
    use aws_sdk_pricing::types::FilterType;
    let products = mock!(aws_sdk_pricing::Client::get_products)
        .match_requests(|r| {
            let filters: BTreeMap<&str, &str> = r
                .filters()
                .iter()
                .filter(|f| f.r#type() == &FilterType::TermMatch)
                .map(|f| (f.field(), f.value()))
                .collect();
            r.service_code() == Some("AmazonEC2")
                && filters
                    == BTreeMap::from([
                        ("capacitystatus", "Used"),
                        ("instanceType", "t3.micro"),
                        ("operatingSystem", "Linux"),
                        ("preInstalledSw", "NA"),
                        ("regionCode", "eu-west-1"),
                        ("tenancy", "Shared"),
                    ])
        })
        .then_output(|| {
            GetProductsOutput::builder()
                .price_list(T3_MICRO_PRODUCT)
                .build()
        });
    let empty = mock!(aws_sdk_pricing::Client::get_products)
        .match_requests(|r| r.filters().iter().any(|f| f.value() == "x9.nothing"))
        .then_output(|| GetProductsOutput::builder().build());
    let cloud = AwsCloud::from_clients(ec2_with(&[]), ssm(), route53(), "eu-west-1")
        .with_pricing_client(pricing_with(&[&products, &empty]));
    assert_eq!(
        cloud.on_demand_price("t3.micro").await.expect("price"),
        Some(0.0104)
    );
    assert_eq!(
        cloud.on_demand_price("x9.nothing").await.expect("answer"),
        None
    );
    assert_eq!(products.num_calls(), 1);
}

#[tokio::test]
async fn ubuntu_daily_images_are_canonicals_newest_images_testing_build_of_the_codename() {
    let images = mock!(Client::describe_images)
        .match_requests(|r| {
            let filter = |name: &str| filter_values(r, name);
            r.owners() == [spotkeeper_cloud::CANONICAL_OWNER]
                && filter("name")
                    == ["ubuntu/images-testing/hvm-ssd*/ubuntu-noble-daily-arm64-server-*"]
                && filter("architecture") == ["arm64"]
        })
        .then_output(|| {
            let img = |id: &str, date: &str| {
                canonical_image(
                    id,
                    &format!(
                        "ubuntu/images-testing/hvm-ssd-gp3/ubuntu-noble-daily-arm64-server-{date}"
                    ),
                    date,
                )
            };
            DescribeImagesOutput::builder()
                .images(img("ami-0000000000000d001", "2026-11-28T03:04:05.000Z"))
                .images(img("ami-0000000000000d002", "2026-11-29T03:04:05.000Z"))
                .build()
        });
    let cloud = AwsCloud::from_clients(ec2_with(&[&images]), ssm(), route53(), "us-east-1");
    let id = cloud
        .resolve_image(&ImageRef::parse("ubuntu:24.04:arm64:daily").expect("alias"))
        .await
        .expect("resolved");
    assert_eq!(
        id.as_str(),
        "ami-0000000000000d002",
        "the newest daily build"
    );
    assert_eq!(images.num_calls(), 1);
}

#[tokio::test]
async fn placement_scores_are_single_zone_for_one_instance_in_the_region_and_named_by_this_account()
{
    use aws_sdk_ec2::operation::describe_availability_zones::DescribeAvailabilityZonesOutput;
    use aws_sdk_ec2::operation::get_spot_placement_scores::GetSpotPlacementScoresOutput;
    use aws_sdk_ec2::types::{AvailabilityZone, SpotPlacementScore};
    // A recorded answer (trimmed): scores by zone id, as AWS gives them.
    let scores = mock!(Client::get_spot_placement_scores)
        .match_requests(|r| {
            r.target_capacity() == Some(1)
                && r.single_availability_zone() == Some(true)
                && r.region_names() == ["us-east-1"]
                && r.instance_types() == ["t3.micro", "t3a.micro"]
        })
        .then_output(|| {
            GetSpotPlacementScoresOutput::builder()
                .spot_placement_scores(
                    SpotPlacementScore::builder()
                        .region("us-east-1")
                        .availability_zone_id("use1-az6")
                        .score(9)
                        .build(),
                )
                .spot_placement_scores(
                    SpotPlacementScore::builder()
                        .region("us-east-1")
                        .availability_zone_id("use1-az1")
                        .score(3)
                        .build(),
                )
                .build()
        });
    let zones = mock!(Client::describe_availability_zones).then_output(|| {
        DescribeAvailabilityZonesOutput::builder()
            .availability_zones(
                AvailabilityZone::builder()
                    .zone_name("us-east-1a")
                    .zone_id("use1-az6")
                    .build(),
            )
            .availability_zones(
                AvailabilityZone::builder()
                    .zone_name("us-east-1b")
                    .zone_id("use1-az1")
                    .build(),
            )
            .build()
    });
    let cloud = AwsCloud::from_clients(ec2_with(&[&scores, &zones]), ssm(), route53(), "us-east-1");
    let got = cloud
        .placement_scores(&["t3.micro".to_owned(), "t3a.micro".to_owned()])
        .await
        .expect("the request matched");
    assert_eq!(
        got,
        BTreeMap::from([("us-east-1a".to_owned(), 9), ("us-east-1b".to_owned(), 3)])
    );
    assert_eq!(scores.num_calls(), 1);
}

fn fis_with(rules: &[&Rule]) -> aws_sdk_fis::Client {
    let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
    for r in rules {
        interceptor = interceptor.with_rule(r);
    }
    let conf = aws_sdk_fis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "mock"))
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .build();
    aws_sdk_fis::Client::from_conf(conf)
}

/// `drill --fis`: one template for exactly the box's instance (by ARN, no
/// tag selection that could take another), FIS's spot action with the
/// two-minute notice, no stop condition, tagged at creation, idempotent
/// tokens; then the experiment, its state and the template's deletion.
#[tokio::test]
async fn a_fis_drill_interrupts_exactly_one_instance_with_two_minutes_notice() {
    use aws_sdk_fis::operation::create_experiment_template::CreateExperimentTemplateOutput;
    use aws_sdk_fis::operation::delete_experiment_template::DeleteExperimentTemplateOutput;
    use aws_sdk_fis::operation::get_experiment::GetExperimentOutput;
    use aws_sdk_fis::operation::start_experiment::StartExperimentOutput;
    use aws_sdk_fis::types::{Experiment, ExperimentState, ExperimentStatus, ExperimentTemplate};
    use spotkeeper_cloud::{FIS_SPOT_ACTION, FisDrill, FisRequest};

    const ARN: &str = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0";
    const ROLE: &str = "arn:aws:iam::123456789012:role/spotkeeper-fis-spot";
    let owned = |t: Option<&std::collections::HashMap<String, String>>| {
        t.and_then(|t| t.get("spotkeeper:owner"))
            .map(String::as_str)
            == Some("team")
            && t.and_then(|t| t.get("spotkeeper:box")).map(String::as_str) == Some("dev")
    };
    let create = mock!(aws_sdk_fis::Client::create_experiment_template)
        .match_requests(move |r| {
            let target = r.targets().and_then(|t| t.get("instance"));
            let action = r.actions().and_then(|a| a.get("interrupt"));
            r.client_token() == Some("spotkeeper-drill-abc")
                && r.role_arn() == Some(ROLE)
                && r.targets().is_some_and(|t| t.len() == 1)
                && target.is_some_and(|t| {
                    t.resource_type() == "aws:ec2:spot-instance"
                        && t.resource_arns() == [ARN]
                        && t.selection_mode() == "ALL"
                        && t.resource_tags().is_none()
                        && t.filters().is_empty()
                })
                && r.actions().is_some_and(|a| a.len() == 1)
                && action.is_some_and(|a| {
                    a.action_id() == FIS_SPOT_ACTION
                        && a.parameters()
                            .and_then(|p| p.get("durationBeforeInterruption"))
                            .map(String::as_str)
                            == Some("PT2M")
                        && a.targets()
                            .and_then(|t| t.get("SpotInstances"))
                            .map(String::as_str)
                            == Some("instance")
                })
                && r.stop_conditions().len() == 1
                && r.stop_conditions()[0].source() == "none"
                && owned(r.tags())
        })
        .then_output(|| {
            CreateExperimentTemplateOutput::builder()
                .experiment_template(ExperimentTemplate::builder().id("EXT1abc").build())
                .build()
        });
    let start = mock!(aws_sdk_fis::Client::start_experiment)
        .match_requests(move |r| {
            r.experiment_template_id() == Some("EXT1abc")
                && r.client_token() == Some("spotkeeper-drill-abc-start")
                && owned(r.tags())
        })
        .then_output(|| {
            StartExperimentOutput::builder()
                .experiment(Experiment::builder().id("EXP1def").build())
                .build()
        });
    let state = mock!(aws_sdk_fis::Client::get_experiment)
        .match_requests(|r| r.id() == Some("EXP1def"))
        .then_output(|| {
            GetExperimentOutput::builder()
                .experiment(
                    Experiment::builder()
                        .id("EXP1def")
                        .state(
                            ExperimentState::builder()
                                .status(ExperimentStatus::Failed)
                                .reason("Unable to assume role")
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
    let delete = mock!(aws_sdk_fis::Client::delete_experiment_template)
        .match_requests(|r| r.id() == Some("EXT1abc"))
        .then_output(|| DeleteExperimentTemplateOutput::builder().build());
    let cloud = AwsCloud::from_clients(ec2_with(&[]), ssm(), route53(), "us-east-1")
        .with_fis_client(fis_with(&[&create, &start, &state, &delete]));
    let tags = [
        ("spotkeeper:owner".to_owned(), "team".to_owned()),
        ("spotkeeper:box".to_owned(), "dev".to_owned()),
        (
            "spotkeeper:drill".to_owned(),
            "spotkeeper-drill-abc".to_owned(),
        ),
    ];
    let started = cloud
        .fis_interrupt(&FisRequest {
            instance_arn: ARN,
            role_arn: ROLE,
            description: "spotkeeper drill of box dev",
            tags: &tags,
            client_token: "spotkeeper-drill-abc",
        })
        .await
        .expect("the requests matched");
    assert_eq!(
        started,
        FisDrill {
            template: "EXT1abc".into(),
            experiment: "EXP1def".into()
        }
    );
    assert_eq!((create.num_calls(), start.num_calls()), (1, 1));
    assert_eq!(
        cloud.fis_experiment_state("EXP1def").await.expect("state"),
        (
            "failed".to_owned(),
            Some("Unable to assume role".to_owned())
        )
    );
    cloud.delete_fis_template("EXT1abc").await.expect("deleted");
    assert_eq!(delete.num_calls(), 1);
}
