//! The library's pycloudlib-class operations against the AWS emulator:
//! launch/wait/delete, get_instance, images, snapshot → AMI, VPCs, volumes,
//! network interfaces and key pairs.

use aws_sdk_ec2::types::Filter;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{
    Arch, AwsCloud, CloudError, DELETE_WITH, ErrorKind, ImageId, ImageRef, InstanceId,
    InstanceState, LaunchSpec, RootVolume, TagFilter, VPC_TAG,
};
use spotkeeper_testkit::{Moto, REGION};

/// One of the emulator's built-in images (Canonical's Ubuntu 16.04).
const AMI: &str = "ami-785db401";

async fn cloud(moto: &Moto) -> AwsCloud {
    AwsCloud::connect_emulator(&moto.endpoint(), REGION).await
}

#[tokio::test]
async fn launch_without_waiting_then_wait_get_and_delete() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    let mut spec = LaunchSpec::new(ImageId::new(AMI), "t3.small");
    spec.root_volume = Some(RootVolume {
        size_gb: 16,
        kind: "gp3".into(),
    });
    spec.tags.insert(tags::NAME.into(), "lib-test".into());
    let mut handle = cloud.launch_instance(&spec, false).await.expect("launch");
    assert_eq!(
        handle.info().state,
        InstanceState::Pending,
        "returned at once"
    );
    assert_eq!(
        handle.wait().await.expect("wait").state,
        InstanceState::Running
    );

    let mut again = cloud.get_instance(handle.id()).await.expect("get_instance");
    assert_eq!(again.info().instance_type, "t3.small");
    assert_eq!(
        again.refresh().await.expect("refresh").tag(tags::NAME),
        Some("lib-test")
    );

    handle.delete(true).await.expect("delete");
    assert_eq!(handle.info().state, InstanceState::Terminated);
    let err: CloudError = cloud
        .get_instance(&InstanceId::new("i-00000000000000bad"))
        .await
        .expect_err("unknown");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn images_resolve_through_ssm_and_the_describe_images_fallback() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    // Amazon Linux's public parameter exists in the emulator.
    let al = cloud.latest_al2023(Arch::Amd64).await.expect("al2023");
    assert!(al.as_str().starts_with("ami-"), "{al}");
    assert_eq!(
        cloud
            .resolve_image(&ImageRef::parse("al2023").expect("alias"))
            .await
            .expect("resolve"),
        al
    );
    // Ubuntu's does not: DescribeImages over Canonical's images answers.
    let xenial = cloud
        .latest_ubuntu("16.04", Arch::Amd64)
        .await
        .expect("ubuntu 16.04");
    assert_eq!(xenial.as_str(), "ami-785db401");
    // The persistent-root tools' default image, by its codename.
    assert_eq!(
        cloud
            .resolve_image(&ImageRef::parse("ubuntu:xenial").expect("alias"))
            .await
            .expect("resolve"),
        xenial
    );
    let err = cloud
        .latest_ubuntu("99.04", Arch::Arm64)
        .await
        .expect_err("no such release");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("Ubuntu 99.04 arm64"), "{err}");
}

#[tokio::test]
async fn snapshot_makes_a_tagged_ami_and_delete_image_removes_it_with_its_snapshots() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    let mut handle = cloud
        .launch_instance(&LaunchSpec::new(ImageId::new(AMI), "t3.micro"), true)
        .await
        .expect("launch");
    let t = vec![
        (tags::OWNER.to_owned(), "lib".to_owned()),
        (tags::BOX.to_owned(), "dev".to_owned()),
    ];
    let image = cloud
        .create_image(
            handle.id(),
            "dev-image-1",
            &t,
            spotkeeper_cloud::ImageVolumes::All,
        )
        .await
        .expect("snapshot");
    assert_eq!(image.state, "available");
    assert_eq!(image.tags.get(tags::BOX).map(String::as_str), Some("dev"));
    assert!(!image.snapshot_ids.is_empty(), "{image:?}");
    let snaps = cloud
        .ec2()
        .describe_snapshots()
        .snapshot_ids(image.snapshot_ids[0].as_str())
        .send()
        .await
        .expect("snapshots");
    let snap_tags: Vec<_> = snaps.snapshots()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap_or(""), t.value().unwrap_or("")))
        .collect();
    assert!(
        snap_tags.contains(&(tags::BOX, "dev")),
        "snapshots are tagged: {snap_tags:?}"
    );

    let mine = cloud
        .images(&TagFilter::default().with(tags::OWNER, "lib"))
        .await
        .expect("images");
    assert_eq!(
        mine.iter().map(|i| &i.id).collect::<Vec<_>>(),
        vec![&image.id]
    );

    // A new instance boots from it.
    let from_image = cloud
        .launch_instance(&LaunchSpec::new(image.id.clone(), "t3.micro"), true)
        .await
        .expect("launch from image");
    assert_eq!(from_image.info().image_id.as_ref(), Some(&image.id));

    let deleted = cloud.delete_image(&image.id).await.expect("delete image");
    assert_eq!(deleted, image.snapshot_ids);
    assert!(
        cloud
            .images(&TagFilter::default().with(tags::OWNER, "lib"))
            .await
            .expect("images")
            .is_empty()
    );
    let gone = cloud
        .ec2()
        .describe_snapshots()
        .snapshot_ids(image.snapshot_ids[0].as_str())
        .send()
        .await;
    assert!(
        gone.map(|o| o.snapshots().is_empty()).unwrap_or(true),
        "snapshot deleted"
    );
    assert!(
        cloud
            .delete_image(&image.id)
            .await
            .expect("again")
            .is_empty(),
        "deleting twice is fine"
    );
    handle.delete(false).await.expect("cleanup");
}

async fn count(cloud: &AwsCloud, name: &str) -> usize {
    let f = || {
        Filter::builder()
            .name(format!("tag:{VPC_TAG}"))
            .values(name)
            .build()
    };
    let ec2 = cloud.ec2();
    ec2.describe_vpcs()
        .filters(f())
        .send()
        .await
        .expect("vpcs")
        .vpcs()
        .len()
        + ec2
            .describe_subnets()
            .filters(f())
            .send()
            .await
            .expect("subnets")
            .subnets()
            .len()
        + ec2
            .describe_internet_gateways()
            .filters(f())
            .send()
            .await
            .expect("igws")
            .internet_gateways()
            .len()
        + ec2
            .describe_route_tables()
            .filters(f())
            .send()
            .await
            .expect("rts")
            .route_tables()
            .len()
        + ec2
            .describe_security_groups()
            .filters(f())
            .send()
            .await
            .expect("sgs")
            .security_groups()
            .len()
}

#[tokio::test]
async fn a_vpc_is_created_once_and_its_delete_leaves_nothing_behind() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    let vpc = cloud
        .get_or_create_vpc("lab", "10.20.0.0/16")
        .await
        .expect("vpc");
    let info = vpc.info().clone();
    assert_eq!(info.subnets.len(), 4, "{info:?}");
    assert!(
        info.internet_gateway_id.is_some()
            && info.route_table_id.is_some()
            && info.security_group_id.is_some()
    );
    assert_eq!(count(&cloud, "lab").await, 1 + 4 + 1 + 1 + 1);
    let same = cloud
        .get_or_create_vpc("lab", "10.20.0.0/16")
        .await
        .expect("again");
    assert_eq!(same.info().id, info.id, "found, not made twice");
    assert_eq!(count(&cloud, "lab").await, 8);
    let sgs = cloud
        .ec2()
        .describe_security_groups()
        .group_ids(info.security_group_id.clone().expect("sg"))
        .send()
        .await
        .expect("sg");
    let ssh_open = sgs.security_groups()[0]
        .ip_permissions()
        .iter()
        .any(|p| p.from_port() == Some(22) && p.to_port() == Some(22));
    assert!(ssh_open, "SSH allowed in");

    let mut spec = LaunchSpec::new(ImageId::new(AMI), "t3.micro");
    spec.subnet_id = vpc.subnet(Some("us-east-1b")).map(str::to_owned);
    spec.security_group_ids = vec![info.security_group_id.clone().expect("sg")];
    let inst = cloud
        .launch_instance(&spec, true)
        .await
        .expect("launch in vpc");
    assert_eq!(inst.info().vpc_id.as_deref(), Some(info.id.as_str()));

    vpc.delete().await.expect("delete vpc");
    assert_eq!(count(&cloud, "lab").await, 0, "nothing left");
    let after = cloud
        .get_instance(inst.id())
        .await
        .expect("still described");
    assert_eq!(
        after.info().state,
        InstanceState::Terminated,
        "instances inside were terminated first"
    );
    assert!(cloud.vpc("lab").await.expect("lookup").is_none());
}

#[tokio::test]
async fn added_volumes_and_interfaces_take_the_next_free_slot_and_go_with_the_instance() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    let vpc = cloud
        .get_or_create_vpc("disks", "10.30.0.0/16")
        .await
        .expect("vpc");
    let mut spec = LaunchSpec::new(ImageId::new(AMI), "t3.micro");
    spec.subnet_id = vpc.subnet(None).map(str::to_owned);
    let mut inst = cloud.launch_instance(&spec, true).await.expect("launch");

    let v1 = inst.add_volume(8, "gp3").await.expect("volume 1");
    let v2 = inst.add_volume(4, "gp2").await.expect("volume 2");
    assert_eq!(
        v1.attachments,
        vec![(inst.id().clone(), "/dev/sdf".to_owned())]
    );
    assert_eq!(
        v2.attachments,
        vec![(inst.id().clone(), "/dev/sdg".to_owned())]
    );
    assert_eq!(
        (v1.size_gb, v1.kind.as_str(), v2.kind.as_str()),
        (8, "gp3", "gp2")
    );
    assert_eq!(v1.zone, inst.info().zone.clone().expect("zone"));
    assert_eq!(v1.tags.get(DELETE_WITH), Some(&inst.id().to_string()));

    let n1 = inst.add_network_interface().await.expect("eni 1");
    let n2 = inst.add_network_interface().await.expect("eni 2");
    assert_eq!(n1.attachment.as_ref().map(|a| a.1), Some(1));
    assert_eq!(n2.attachment.as_ref().map(|a| a.1), Some(2));
    assert_eq!(n1.subnet_id, inst.info().subnet_id);

    inst.delete(true).await.expect("delete");
    let left = cloud
        .volumes(&TagFilter::default().with(DELETE_WITH, inst.id().as_str()))
        .await
        .expect("volumes");
    assert!(
        left.is_empty(),
        "added volumes deleted with the instance: {left:?}"
    );
    assert!(
        cloud
            .network_interface(&n1.id)
            .await
            .expect("eni")
            .is_none()
    );
    assert!(
        cloud
            .network_interface(&n2.id)
            .await
            .expect("eni")
            .is_none()
    );
    vpc.delete().await.expect("vpc");
}

#[tokio::test]
async fn importing_a_key_twice_imports_it_once() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    let dir = tempfile::tempdir().expect("dir");
    let key = dir.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEXl0Wn4XxVNq0xT7nqZbUXpAIzOj5Q8h0n9N2Cz2l9D test@spotkeeper\n").expect("write");
    let first = cloud
        .import_key_pair("dev-key", &key)
        .await
        .expect("import");
    assert!(first.created);
    let second = cloud
        .import_key_pair("dev-key", &key)
        .await
        .expect("import again");
    assert!(!second.created);
    assert_eq!(second.name, "dev-key");
    let missing = cloud
        .import_key_pair("other", &dir.path().join("nope.pub"))
        .await
        .expect_err("no file");
    assert!(missing.to_string().contains("nope.pub"), "{missing}");
    cloud.delete_key_pair("dev-key").await.expect("delete");
    assert!(cloud.key_pair("dev-key").await.expect("lookup").is_none());
}

#[tokio::test]
async fn console_log_restart_shutdown_start_and_launching_into_a_vpc() {
    let moto = Moto::start();
    let cloud = cloud(&moto).await;
    let vpc = cloud
        .get_or_create_vpc("lib-vpc", "10.42.0.0/16")
        .await
        .expect("vpc");
    let mut spec = LaunchSpec::new(ImageId::new(AMI), "t3.micro");
    spec.market = spotkeeper_cloud::Market::OnDemand;
    let mut inst = cloud
        .launch_in_vpc(&spec, &vpc, true)
        .await
        .expect("launched into the vpc");
    assert_eq!(inst.info().vpc_id.as_deref(), Some(vpc.info().id.as_str()));
    assert!(
        vpc.info()
            .subnets
            .iter()
            .any(|(s, _)| Some(s.as_str()) == inst.info().subnet_id.as_deref()),
        "in one of its subnets: {:?}",
        vpc.info().subnets
    );

    // The emulator keeps a console log for every instance.
    let log = inst.console_log().await.expect("console output");
    assert!(log.is_some_and(|l| !l.is_empty()));

    inst.restart(true).await.expect("rebooted");
    assert_eq!(inst.info().state, InstanceState::Running);
    inst.shutdown(true).await.expect("stopped");
    assert_eq!(inst.info().state, InstanceState::Stopped);
    inst.start(true).await.expect("started");
    assert_eq!(inst.info().state, InstanceState::Running);
    inst.delete(true).await.expect("delete");
    vpc.delete().await.expect("vpc deleted");
}
