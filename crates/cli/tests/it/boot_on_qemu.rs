//! `agent = true` on a real kernel: Debian's cloud kernel boots in QEMU
//! (TCG) an image that carries the `spotkeeper` binary (the "the image
//! already has it" case), with the box's data volume as an NVMe drive whose
//! serial is its volume id and a NIC on QEMU's user network. The user data
//! spotkeeper generates formats and mounts the volume and installs the
//! agent's unit; the image's `systemctl` stand-in starts it from the unit's
//! own `ExecStart` line. The agent inside finds its instance, region and
//! role credentials at the fake metadata service this test serves on
//! loopback (10.0.2.2 to the guest), and tags the instance in the emulator.
//! No daemon runs. On the warning the hook writes its checkpoint to the
//! volume; the agent unmounts it and tags the outcome; the volume then
//! reads, from the host, as a filesystem that was cleanly unmounted with
//! the checkpoint in it: what the detach after the hook relies on.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use spotkeeper_engine::bootstrap::{BootAgent, BootData, BootVolumes, user_data};
use spotkeeper_testkit::Moto;
use spotkeeper_testkit::qemu::{self, DiskIds, Drive, Vm};

use crate::agent_on_loopback::{Imds, start_imds, tag};

const DATA_VOLUME: &str = "vol-0da7a000000000003";
/// A boot, the agent's start (the binary read from an emulated disk) and the
/// hook under TCG take tens of seconds; the bound is generous, as for the
/// engine's boot test.
const BOOT: Duration = Duration::from_secs(240);

/// The environment the image gives its services: the emulator (reached
/// through the host) for EC2 calls and the fake metadata service; the
/// credentials are the instance role's, from the metadata service.
fn instance_environment(moto: &Moto, imds: u16) -> String {
    let ec2 = moto.endpoint().replace("127.0.0.1", "10.0.2.2");
    format!(
        "AWS_ENDPOINT_URL={ec2}\n\
         AWS_EC2_METADATA_SERVICE_ENDPOINT=http://10.0.2.2:{imds}\n\
         AWS_CONFIG_FILE=/etc/spotkeeper/no-aws-config\n\
         AWS_SHARED_CREDENTIALS_FILE=/etc/spotkeeper/no-aws-config\n\
         RUST_LOG=info\n"
    )
}

fn host_tool(tool: &str, args: &[&str], disk: &Path) -> String {
    let out = Command::new(tool)
        .args(args)
        .arg(disk)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (e2fsprogs: run scripts/setup)"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image's disk: the test system, its network, the `spotkeeper` binary
/// where the agent's unit runs it, the `systemctl` stand-in and the
/// instance's environment.
fn image_with_the_agent(t: &Path, kernel: &qemu::Kernel, environment: &str, ids: &DiskIds) {
    let tree = t.join("image-tree");
    qemu::system_tree(&tree, "image", qemu::TEST_INIT, &[&kernel.release]);
    qemu::network_modules(&tree, kernel);
    qemu::install_program(
        &tree,
        Path::new(env!("CARGO_BIN_EXE_spotkeeper")),
        "usr/local/bin/spotkeeper",
    );
    std::fs::write(tree.join("usr/bin/systemctl"), qemu::TEST_SYSTEMCTL).expect("systemctl");
    Command::new("chmod")
        .arg("755")
        .arg(tree.join("usr/bin/systemctl"))
        .status()
        .expect("chmod");
    std::fs::create_dir_all(tree.join("etc/spotkeeper")).expect("etc");
    std::fs::write(tree.join("etc/spotkeeper/no-aws-config"), "").expect("empty");
    std::fs::write(tree.join("etc/instance-environment"), environment).expect("environment");
    qemu::cloud_disk(&tree, ids, &t.join("disk.img"));
}

/// The user data spotkeeper generates for a box with a data volume, the
/// agent and a hook that writes a checkpoint to the volume.
fn generated() -> String {
    user_data(
        "dev",
        &BootVolumes {
            data: Some(BootData {
                volume: DATA_VOLUME.into(),
                device: "/dev/sdf".into(),
                mount: "/data".into(),
                new: true,
            }),
            root: None,
            agent: Some(BootAgent {
                // Busy on the volume until it ends: the unmount waits.
                command: Some(
                    "cd /data && echo \"checkpoint of $(cat /var/lib/cloud/instance-id)\" > checkpoint && sleep 2"
                        .into(),
                ),
                timeout_secs: 60,
            }),
        },
        // The box's own work: keeps the instance up (the test stops it).
        Some("#!/bin/sh\necho 'user-data: working'\nsleep 900\n"),
    )
    .expect("generate")
    .expect("some")
}

#[test]
fn the_agent_runs_the_hook_and_unmounts_the_data_volume_on_a_real_kernel() {
    let kernel = qemu::kernel();
    let moto = Moto::start();
    let instance = moto
        .boto("print(ec2.run_instances(ImageId='ami-0123456789abcdef0', MinCount=1, MaxCount=1)['Instances'][0]['InstanceId'])")
        .trim()
        .to_owned();
    let imds_state = Arc::new(Mutex::new(Imds {
        instance: instance.clone(),
        ..Imds::default()
    }));
    let imds = start_imds(imds_state.clone());

    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path();
    let ids = DiskIds::cloud_image();
    image_with_the_agent(t, &kernel, &instance_environment(&moto, imds), &ids);
    let data = t.join("data-volume.img");
    qemu::blank_disk(&data, 64);
    qemu::seed_disk(&t.join("seed.img"), &instance, &generated());

    let vm = Vm::boot_networked(
        &kernel,
        &format!(
            "console=ttyS0 root=PARTUUID={} ro rootwait panic=-1 nvme_core.io_timeout=8",
            ids.root_part
        ),
        &[
            Drive::new("disk", &t.join("disk.img"), "vol0b00700000000000"),
            Drive::new("seed", &t.join("seed.img"), "cidata"),
            Drive::new("data", &data, &DATA_VOLUME.replace('-', "")),
        ],
    );
    let console = |what: &str, text: &str| {
        assert!(
            vm.wait_for(text, BOOT),
            "{what}: the console never said {text:?}:\n{}",
            vm.console()
        );
    };
    console("the network", "test-init: network up");
    console(
        "the data volume",
        "is new and blank; creating an ext4 filesystem",
    );
    console("the unit", "systemctl: started spotkeeper-agent.service");
    console("the agent", "agent watching for a spot warning");
    console("the box's own user data", "user-data: working");
    assert!(!vm.console().contains("cannot tag"), "{}", vm.console());

    // The warning appears in the metadata service; the daemon is nowhere.
    let due = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(120));
    imds_state.lock().expect("imds").action = Some(format!(
        "{{\"action\": \"terminate\", \"time\": \"{due}\"}}"
    ));
    let cued = Instant::now();
    spotkeeper_testkit::eventually(
        Duration::from_secs(90),
        Duration::from_millis(500),
        || (tag(&moto, &instance, "spotkeeper:hook") == "done").then_some(()),
        || {
            format!(
                "no outcome tag after the warning; the console:\n{}",
                vm.console()
            )
        },
    );
    println!(
        "hook done and tagged {:.1} s after the warning",
        cued.elapsed().as_secs_f64()
    );
    let until: u64 = tag(&moto, &instance, "spotkeeper:hook-until")
        .parse()
        .expect("the gate: seconds");
    assert!(until > 0);
    let said = vm.console();
    for line in said.lines().filter(|l| {
        !l.starts_with('[')
            && [
                "test-init:",
                "spotkeeper-boot:",
                "systemctl:",
                "user-data:",
                "agent",
                "on_interruption",
                "unmounted",
                "warning",
            ]
            .iter()
            .any(|k| l.contains(k))
    }) {
        println!("    {line}");
    }
    assert!(said.contains("unmounted /data"), "{said}");
    assert_eq!(
        imds_state.lock().expect("imds").tokenless,
        0,
        "a metadata read without the token"
    );
    drop(vm); // the instance is taken away, as AWS does.

    // The volume, as the next instance will find it: cleanly unmounted (no
    // journal to replay), the checkpoint on it.
    let header = host_tool("dumpe2fs", &["-h"], &data);
    let features = header
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_else(|| panic!("not ext4:\n{header}"));
    assert!(
        !features.contains("needs_recovery"),
        "the volume was not unmounted: {features}"
    );
    assert_eq!(
        host_tool("debugfs", &["-R", "cat /checkpoint"], &data).trim(),
        format!("checkpoint of {instance}")
    );
}
