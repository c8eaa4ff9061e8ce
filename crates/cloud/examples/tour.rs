//! A tour of spotkeeper-cloud, pycloudlib style: resolve an image, make a
//! VPC, launch a spot instance into it without waiting, wait, add a volume and
//! a network interface, read its console log, make an AMI of it, boot an
//! on-demand instance from that AMI into the VPC, reboot, stop and start it,
//! then clean everything up. (Commands, files and scripts over SSH need a
//! reachable server: see `tests/it/ssh_on_loopback.rs`.)
//!
//! Run it against the local AWS emulator: `scripts/emulator cargo run -p spotkeeper-cloud --example tour`
//! (against a real account it launches two small spot instances for a minute).

use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::prelude::*;
use spotkeeper_cloud::{
    Arch, AwsCloud, ClientConfig, ImageRef, LaunchSpec, Market, RootVolume, SshSettings,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Region, profile and endpoint from the environment (AWS_REGION,
    // AWS_PROFILE, AWS_ENDPOINT_URL); credentials from the standard chain.
    let cloud = AwsCloud::connect(&ClientConfig::default()).await?;
    println!("region {}", cloud.region());

    let image = cloud
        .resolve_image(&ImageRef::AmazonLinux2023 { arch: Arch::Amd64 })
        .await?;
    println!("al2023 is {image}");

    let vpc = cloud
        .get_or_create_vpc("spotkeeper-tour", "10.77.0.0/16")
        .await?;
    println!(
        "vpc {} with subnets {:?}",
        vpc.info().id,
        vpc.info().subnets
    );

    let mut spec = LaunchSpec::new(image, "t3.micro");
    spec.market = Market::Spot;
    spec.subnet_id = vpc.subnet(None).map(str::to_owned);
    spec.security_group_ids = vpc.info().security_group_id.iter().cloned().collect();
    spec.root_volume = Some(RootVolume {
        size_gb: 12,
        kind: "gp3".into(),
    });
    spec.user_data = Some("#cloud-config\nfinal_message: \"system up!\"\n".into());
    spec.tags
        .insert(tags::NAME.into(), "spotkeeper-tour".into());
    let mut inst = cloud.launch_instance(&spec, false).await?;
    println!(
        "launched {} ({}), not waiting",
        inst.id(),
        inst.info().state
    );
    inst.wait().await?;
    println!(
        "{} is {} at {:?}",
        inst.id(),
        inst.info().state,
        inst.info().address()
    );

    let volume = inst.add_volume(8, "gp3").await?;
    println!("added {} at {:?}", volume.id, volume.attachments);
    let eni = inst.add_network_interface().await?;
    println!(
        "added {} at device index {:?}",
        eni.id,
        eni.attachment.map(|a| a.1)
    );

    // Commands need a reachable SSH server; the emulator's addresses are not.
    let inst = inst.with_ssh(SshSettings {
        user: "ec2-user".into(),
        ..SshSettings::default()
    });
    println!(
        "would run commands as {} over ssh",
        inst.ssh_settings().user
    );

    if let Some(log) = inst.console_log().await? {
        println!("console log: {} bytes", log.len());
    }

    let ami = cloud
        .create_image(
            inst.id(),
            "spotkeeper-tour-image",
            &[(tags::NAME.into(), "spotkeeper-tour".into())],
            spotkeeper_cloud::ImageVolumes::All,
        )
        .await?;
    println!(
        "image {} is {} (snapshots {:?})",
        ami.id, ami.state, ami.snapshot_ids
    );
    // An on-demand instance from the AMI, placed in the VPC's subnet and
    // security group; rebooted, stopped and started again.
    let mut od = LaunchSpec::new(ami.id.clone(), "t3.micro");
    od.market = Market::OnDemand;
    let mut from_ami = cloud.launch_in_vpc(&od, &vpc, true).await?;
    println!(
        "{} booted from {} in {:?}",
        from_ami.id(),
        ami.id,
        from_ami.info().subnet_id
    );
    from_ami.restart(true).await?;
    from_ami.shutdown(true).await?;
    println!("{} is {}", from_ami.id(), from_ami.info().state);
    from_ami.start(true).await?;
    println!("{} is {} again", from_ami.id(), from_ami.info().state);

    from_ami.delete(true).await?;
    let mut inst = inst;
    inst.delete(true).await?;
    println!("instances terminated; added volume and interface deleted with them");
    let snaps = cloud.delete_image(&ami.id).await?;
    println!("image {} deregistered, snapshots {snaps:?} deleted", ami.id);
    vpc.delete().await?;
    println!("vpc deleted");
    Ok(())
}
