//! The boot script on a real kernel: Debian's cloud kernel boots in QEMU
//! (TCG) with disks laid out like Ubuntu's cloud image (GPT: 14 BIOS boot,
//! 15 EFI, 1 the root filesystem labelled `cloudimg-rootfs`, found by the
//! kernel as `root=PARTUUID=…`), the persistent root volume made as AWS
//! makes one from the image's snapshot (the same partition UUID, filesystem
//! UUID and label), and the volumes as NVMe drives whose serials are their
//! EBS volume ids, attached after the instance started, as spotkeeper
//! attaches them. A seed drive plays cloud-init's data source: the user
//! data runs once per instance.
//!
//! Five boots, two instances (each a fresh copy of the image's disk), one
//! root volume and one data volume:
//! 1. instance a, first boot: the generated user data waits for the
//!    volumes, gives the root volume an identity of its own, installs the
//!    shim and reboots;
//! 2. a again: the shim chain-loads the volume's system from its partition
//!    (and says that the volume has no modules for the running kernel); the
//!    user data formats the new data volume and runs the box's script;
//! 3. instance b, first boot: nothing to re-identify; shim, reboot;
//! 4. b again: chain-loaded, modules present now; the data volume keeps its
//!    filesystem and the data a wrote;
//! 5. b with the root volume detached: the shim falls back to the image's
//!    system and says why.

use std::path::Path;
use std::time::Duration;

use spotkeeper_engine::bootstrap::{BootData, BootVolumes, user_data};
use spotkeeper_testkit::qemu::{self, DiskIds, Drive, Vm};

const ROOT_VOLUME: &str = "vol-0a11ce00000000001";
const DATA_VOLUME: &str = "vol-0da7a000000000002";
/// One boot takes about 5 s. The bound is generous: QEMU 7.2's emulated NVMe
/// drive has been seen to lose a completion under load, which the guest's
/// driver recovers from by aborting and resetting (`nvme_core.io_timeout`
/// below makes that take seconds, not minutes).
const BOOT: Duration = Duration::from_secs(180);

fn serial(volume: &str) -> String {
    volume.replace('-', "")
}

/// The user data spotkeeper generates for a box with both volumes; the
/// box's own script reports what the data volume holds, writes to it, and
/// installs the running kernel's modules on the persistent root.
fn generated(new_data_volume: bool) -> String {
    let volumes = BootVolumes {
        data: Some(BootData {
            volume: DATA_VOLUME.into(),
            device: "/dev/sdf".into(),
            mount: "/data".into(),
            new: new_data_volume,
        }),
        root: Some((ROOT_VOLUME.into(), "/dev/sdg".into())),
        agent: None,
    };
    let user = "#!/bin/sh\n\
        echo \"user-data: on the $(cat /etc/system-name) system; /data holds: $(cat /data/greeting 2>/dev/null || echo nothing)\"\n\
        echo \"written by $(cat /var/lib/cloud/instance-id)\" > /data/greeting\n\
        mkdir -p /lib/modules/$(uname -r)\n";
    user_data("dev", &volumes, Some(user))
        .expect("generate")
        .expect("some")
}

/// The console lines that tell the story of a boot.
fn story(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| {
            (!l.starts_with('[') || l.contains("Kernel panic"))
                && ["spotkeeper-", "test-init:", "user-data:", "Kernel panic"]
                    .iter()
                    .any(|k| l.contains(k))
        })
        .collect()
}

fn show(title: &str, console: &str) {
    println!("--- {title}");
    for line in story(console) {
        println!("    {line}");
    }
}

fn has(console: &str, text: &str) {
    assert!(
        console.contains(text),
        "the console lacks {text:?}; it says:\n{console}"
    );
}

fn lacks(console: &str, text: &str) {
    assert!(
        !console.contains(text),
        "the console says {text:?}:\n{console}"
    );
}

/// An instance's first boot: its volumes appear once it runs.
fn first_boot(
    kernel: &qemu::Kernel,
    cmdline: &str,
    disk: &Path,
    seed: &Path,
    volumes: &[Drive],
) -> String {
    let mut drives = vec![
        Drive::new("disk", disk, "vol0b00700000000000"),
        Drive::new("seed", seed, "cidata"),
    ];
    drives.extend(volumes.iter().cloned().map(Drive::later));
    let mut vm = Vm::boot(kernel, cmdline, &drives);
    assert!(
        vm.wait_for("waiting for volume", BOOT),
        "the boot script never waited for its volumes:\n{}",
        vm.console()
    );
    for v in volumes {
        vm.attach(&v.id);
    }
    vm.finish(BOOT)
}

/// A reboot: every drive attached stays attached.
fn reboot(
    kernel: &qemu::Kernel,
    cmdline: &str,
    disk: &Path,
    seed: &Path,
    volumes: &[Drive],
) -> String {
    let mut drives = vec![
        Drive::new("disk", disk, "vol0b00700000000000"),
        Drive::new("seed", seed, "cidata"),
    ];
    drives.extend(volumes.iter().cloned());
    Vm::boot(kernel, cmdline, &drives).finish(BOOT)
}

#[test]
fn a_persistent_root_on_a_partitioned_volume_boots_on_a_real_kernel() {
    let kernel = qemu::kernel();
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path();
    let ids = DiskIds::cloud_image();

    // The image's disk, and the root volume made from its snapshot: the
    // same identities (the user's system on it says "volume" and lacks the
    // running kernel's modules, as after a kernel upgrade on the volume).
    qemu::system_tree(
        &t.join("image-tree"),
        "image",
        qemu::TEST_INIT,
        &[&kernel.release],
    );
    qemu::cloud_disk(&t.join("image-tree"), &ids, &t.join("image.img"));
    qemu::system_tree(
        &t.join("volume-tree"),
        "volume",
        qemu::TEST_INIT,
        &["5.15.0-1-other"],
    );
    qemu::cloud_disk(&t.join("volume-tree"), &ids, &t.join("root-volume.img"));
    qemu::blank_disk(&t.join("data-volume.img"), 64);
    let cmdline = format!(
        "console=ttyS0 root=PARTUUID={} ro rootwait panic=-1 nvme_core.io_timeout=8",
        ids.root_part
    );
    let volumes = [
        Drive::new(
            "root-volume",
            &t.join("root-volume.img"),
            &serial(ROOT_VOLUME),
        ),
        Drive::new(
            "data-volume",
            &t.join("data-volume.img"),
            &serial(DATA_VOLUME),
        ),
    ];

    // Instance a.
    std::fs::copy(t.join("image.img"), t.join("a.img")).expect("a's disk");
    qemu::seed_disk(
        &t.join("a-seed.img"),
        "i-0aaaaaaaaaaaaaaaa",
        &generated(true),
    );
    let boot = first_boot(
        &kernel,
        &cmdline,
        &t.join("a.img"),
        &t.join("a-seed.img"),
        &volumes,
    );
    show("instance a, first boot", &boot);
    has(&boot, "test-init: image system");
    has(&boot, "partition 1 of /dev/nvme");
    has(&boot, "gave /dev/nvme");
    has(
        &boot,
        &format!("persistent root {ROOT_VOLUME} installed; rebooting into it"),
    );
    has(&boot, "test-init: rebooting");
    let (part, fs, label) = qemu::root_ids(&t.join("root-volume.img"));
    assert_ne!(
        part, ids.root_part,
        "the volume's partition UUID is its own"
    );
    assert_ne!(fs, ids.fs_uuid, "the volume's filesystem UUID is its own");
    assert_eq!(label, "sk-root");
    assert_eq!(
        qemu::root_ids(&t.join("image.img")),
        (
            ids.root_part.clone(),
            ids.fs_uuid.clone(),
            ids.label.clone()
        ),
        "the image is untouched"
    );

    let boot = reboot(
        &kernel,
        &cmdline,
        &t.join("a.img"),
        &t.join("a-seed.img"),
        &volumes,
    );
    show("instance a, reboot", &boot);
    has(&boot, &format!("chain-loading {ROOT_VOLUME}: /dev/nvme"));
    has(&boot, "p1, partition 1 of /dev/nvme");
    has(
        &boot,
        &format!(
            "WARNING: the persistent root has no /lib/modules/{}",
            kernel.release
        ),
    );
    has(&boot, "test-init: volume system on /dev/nvme");
    has(&boot, &format!("test-init: / in /etc/fstab: UUID={fs}"));
    has(
        &boot,
        &format!("running on the persistent root {ROOT_VOLUME}"),
    );
    has(&boot, "WARNING: this boot's init said");
    has(&boot, "is new and blank; creating an ext4 filesystem");
    has(
        &boot,
        "user-data: on the volume system; /data holds: nothing",
    );

    // Instance b: a fresh copy of the image's disk, the same volumes.
    std::fs::copy(t.join("image.img"), t.join("b.img")).expect("b's disk");
    qemu::seed_disk(
        &t.join("b-seed.img"),
        "i-0bbbbbbbbbbbbbbbb",
        &generated(false),
    );
    let boot = first_boot(
        &kernel,
        &cmdline,
        &t.join("b.img"),
        &t.join("b-seed.img"),
        &volumes,
    );
    show("instance b, first boot", &boot);
    has(
        &boot,
        &format!("persistent root {ROOT_VOLUME} installed; rebooting into it"),
    );
    has(&boot, "test-init: rebooting");
    lacks(&boot, "a new identity");
    assert_eq!(
        qemu::root_ids(&t.join("root-volume.img")),
        (part, fs, label),
        "identified once"
    );

    let boot = reboot(
        &kernel,
        &cmdline,
        &t.join("b.img"),
        &t.join("b-seed.img"),
        &volumes,
    );
    show("instance b, reboot", &boot);
    has(&boot, &format!("chain-loading {ROOT_VOLUME}"));
    lacks(&boot, "WARNING: the persistent root has no /lib/modules");
    lacks(&boot, "this boot's init said");
    has(&boot, "has a filesystem; keeping it");
    lacks(&boot, "creating an ext4 filesystem");
    has(
        &boot,
        "user-data: on the volume system; /data holds: written by i-0aaaaaaaaaaaaaaaa",
    );

    // b again, its root volume detached.
    let boot = reboot(
        &kernel,
        &format!("{cmdline} SK_WAIT_SECONDS=3"),
        &t.join("b.img"),
        &t.join("b-seed.img"),
        &volumes[1..],
    );
    show("instance b, reboot without its root volume", &boot);
    has(
        &boot,
        &format!(
            "persistent root {ROOT_VOLUME} is not attached after 3s; booting the image's own system"
        ),
    );
    has(&boot, "test-init: image system");
}
