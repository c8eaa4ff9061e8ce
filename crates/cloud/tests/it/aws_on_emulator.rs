//! `AwsCloud` against the AWS emulator (moto) on loopback: launches are tagged
//! at creation (instance and volumes), describes page and filter by tag, spot
//! requests are listed and cancelled, terminate and not-found behave.

use spotkeeper_cloud::prelude::*;
use std::collections::BTreeMap;

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    AwsCloud, ErrorKind, ImageId, InstanceId, InstanceState, LaunchSpec, Market, SpotRequestState,
    TagFilter,
};
use spotkeeper_testkit::{Moto, REGION};

fn spec(token: &str, owner: &str) -> LaunchSpec {
    LaunchSpec {
        image_id: ImageId::new("ami-0123456789abcdef0"),
        instance_type: "t3.micro".into(),
        market: Market::Spot,
        zone: Some("us-east-1b".into()),
        subnet_id: None,
        security_group_ids: vec![],
        key_name: None,
        user_data: Some("#!/bin/sh\necho hi\n".into()),
        tags: BTreeMap::from([
            (tags::OWNER.to_owned(), owner.to_owned()),
            (tags::BOX.to_owned(), "dev".to_owned()),
            ("team".to_owned(), "ml".to_owned()),
        ]),
        client_token: token.into(),
        root_volume: None,
        iam_instance_profile: None,
        spot_max_price: None,
        metadata_tokens: spotkeeper_cloud::MetadataTokens::Required,
    }
}

#[tokio::test]
async fn launch_tags_the_instance_and_its_volumes_at_creation() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let inst = cloud.launch(&spec("tok-1", "o1")).await.expect("launch");
    assert_eq!(inst.market, Market::Spot);
    assert_eq!(inst.zone.as_deref(), Some("us-east-1b"));
    assert_eq!(inst.instance_type, "t3.micro");
    assert_eq!(inst.tag(tags::BOX), Some("dev"));
    assert_eq!(inst.tag("team"), Some("ml"));

    let vols = cloud
        .ec2()
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("attachment.instance-id")
                .values(inst.id.as_str())
                .build(),
        )
        .send()
        .await
        .expect("describe volumes");
    assert!(!vols.volumes().is_empty(), "the root volume exists");
    for v in vols.volumes() {
        let t: BTreeMap<_, _> = v
            .tags()
            .iter()
            .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")))
            .collect();
        assert_eq!(
            t.get(tags::OWNER),
            Some(&"o1"),
            "volume {:?} tagged at creation",
            v.volume_id()
        );
        assert_eq!(t.get(tags::BOX), Some(&"dev"));
    }

    let seen = cloud
        .instance(&inst.id)
        .await
        .expect("describe")
        .expect("found");
    assert_eq!(seen.state, InstanceState::Running);
    assert!(seen.public_ip.is_some() && seen.private_ip.is_some() && seen.launched_at.is_some());
}

#[tokio::test]
async fn describes_filter_by_owner_and_box_tags() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let a = cloud.launch(&spec("tok-a", "alice")).await.expect("launch");
    let b = cloud.launch(&spec("tok-b", "bob")).await.expect("launch");
    let alice = cloud
        .instances(&TagFilter::default().with(tags::OWNER, "alice"))
        .await
        .expect("describe");
    assert_eq!(alice.iter().map(|i| &i.id).collect::<Vec<_>>(), vec![&a.id]);
    let with_box = cloud
        .instances(&TagFilter::default().with_key(tags::BOX))
        .await
        .expect("describe");
    assert_eq!(with_box.len(), 2);
    let none = cloud
        .instances(
            &TagFilter::default()
                .with(tags::OWNER, "alice")
                .with(tags::BOX, "prod"),
        )
        .await
        .expect("describe");
    assert!(none.is_empty());
    let _ = b;
}

#[tokio::test]
async fn terminate_and_tag_change_what_describe_shows() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let inst = cloud.launch(&spec("tok-1", "o1")).await.expect("launch");
    cloud
        .tag(
            &[inst.id.to_string()],
            &[(tags::STOPPED.to_owned(), "now".to_owned())],
        )
        .await
        .expect("tag");
    cloud
        .terminate(std::slice::from_ref(&inst.id))
        .await
        .expect("terminate");
    let seen = cloud
        .instance(&inst.id)
        .await
        .expect("describe")
        .expect("still listed");
    assert!(seen.state.is_gone(), "{:?}", seen.state);
    assert_eq!(seen.tag(tags::STOPPED), Some("now"));
    assert_eq!(
        cloud
            .instance(&InstanceId::new("i-0000000000000dead"))
            .await
            .expect("describe"),
        None
    );
    cloud.terminate(&[]).await.expect("nothing to do");
}

#[tokio::test]
async fn spot_requests_are_listed_by_tag_and_cancelled() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    use aws_sdk_ec2::types::{RequestSpotLaunchSpecification, ResourceType, Tag, TagSpecification};
    cloud
        .ec2()
        .request_spot_instances()
        .instance_count(1)
        .launch_specification(
            RequestSpotLaunchSpecification::builder()
                .image_id("ami-0123456789abcdef0")
                .instance_type("t3.micro".into())
                .build(),
        )
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SpotInstancesRequest)
                .tags(Tag::builder().key(tags::OWNER).value("o1").build())
                .tags(Tag::builder().key(tags::BOX).value("dev").build())
                .build(),
        )
        .send()
        .await
        .expect("request spot");
    let filter = TagFilter::default()
        .with(tags::OWNER, "o1")
        .with(tags::BOX, "dev");
    let reqs = cloud.spot_requests(&filter).await.expect("describe");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].instance_type.as_deref(), Some("t3.micro"));
    assert!(
        cloud
            .spot_requests(&TagFilter::default().with(tags::OWNER, "o2"))
            .await
            .expect("describe")
            .is_empty()
    );
    cloud
        .cancel_spot_requests(&[reqs[0].id.clone()])
        .await
        .expect("cancel");
    let after = cloud.spot_requests(&filter).await.expect("describe");
    assert!(
        after.iter().all(|r| r.state != SpotRequestState::Open),
        "{after:?}"
    );
}

#[tokio::test]
async fn spot_prices_and_zones_come_from_the_region() {
    let moto = Moto::start();
    moto.set_market(
        &[
            ("t3.micro", Some(0.0104)),
            ("t3.micro/us-east-1c", Some(0.002)),
            ("t3.micro/us-east-1d", None),
        ],
        &[],
    );
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let zones = cloud.zones().await.expect("zones");
    assert!(
        zones.contains(&"us-east-1a".to_owned()) && zones.len() >= 3,
        "{zones:?}"
    );
    let prices = cloud
        .spot_prices(&["t3.micro".into()], &[])
        .await
        .expect("prices");
    assert!(
        prices
            .iter()
            .any(|p| p.zone == "us-east-1c" && p.price == 0.002),
        "{prices:?}"
    );
    assert!(
        !prices.iter().any(|p| p.zone == "us-east-1d"),
        "not offered there: {prices:?}"
    );
    let two = cloud
        .spot_prices(
            &["t3.micro".into()],
            &["us-east-1a".into(), "us-east-1c".into()],
        )
        .await
        .expect("prices");
    assert_eq!(two.len(), 2, "{two:?}");
}

#[tokio::test]
async fn capacity_errors_are_classified() {
    let moto = Moto::start();
    moto.set_market(&[], &["t3.micro/us-east-1b"]);
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let err = cloud
        .launch(&spec("tok-1", "o1"))
        .await
        .expect_err("no capacity");
    assert_eq!(err.kind, ErrorKind::InsufficientCapacity, "{err}");
    assert!(
        err.to_string()
            .starts_with("RunInstances failed: InsufficientInstanceCapacity"),
        "{err}"
    );
}

#[tokio::test]
async fn subnet_zone_is_looked_up() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let vpc = cloud
        .ec2()
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await
        .expect("vpc");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("id");
    let sn = cloud
        .ec2()
        .create_subnet()
        .vpc_id(vpc_id)
        .cidr_block("10.9.1.0/24")
        .availability_zone("us-east-1c")
        .send()
        .await
        .expect("subnet");
    let sn_id = sn.subnet().and_then(|s| s.subnet_id()).expect("id");
    assert_eq!(cloud.subnet_zone(sn_id).await.expect("zone"), "us-east-1c");
    let err = cloud
        .subnet_zone("subnet-00000000")
        .await
        .expect_err("missing");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_batch_launch_makes_count_tagged_instances_in_one_call_and_calls_are_counted() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let before = cloud.aws_calls();
    let batch = cloud
        .launch_many(&spec("tok-batch", "o-batch"), 4)
        .await
        .expect("launch");
    assert_eq!(
        cloud.aws_calls() - before,
        1,
        "one RunInstances for the batch"
    );
    assert_eq!(batch.len(), 4);
    let mut ids: Vec<_> = batch.iter().map(|i| i.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    let found = cloud
        .instances(&TagFilter::default().with(tags::OWNER, "o-batch"))
        .await
        .expect("describe");
    assert_eq!(found.len(), 4);
    assert!(
        found
            .iter()
            .all(|i| i.market == Market::Spot && i.zone.as_deref() == Some("us-east-1b"))
    );
    assert!(
        cloud
            .launch_many(&spec("tok-none", "o-batch"), 0)
            .await
            .expect("none")
            .is_empty()
    );
}

#[tokio::test]
async fn queue_depth_counts_the_waiting_messages_by_name_or_url() {
    let moto = Moto::start();
    let cloud = AwsCloud::connect_emulator(&moto.endpoint(), REGION).await;
    let url = moto.boto(
        "sqs = boto3.client('sqs', **kw)\nu = sqs.create_queue(QueueName='jobs')['QueueUrl']\n\
         [sqs.send_message(QueueUrl=u, MessageBody=str(i)) for i in range(3)]\nprint(u)",
    );
    assert_eq!(cloud.queue_depth("jobs").await.expect("by name"), 3);
    assert_eq!(cloud.queue_depth(url.trim()).await.expect("by url"), 3);
    let e = cloud
        .queue_depth("no-such-queue")
        .await
        .expect_err("missing");
    assert!(e.to_string().contains("no-such-queue"), "{e}");
}
