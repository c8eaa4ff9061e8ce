//! A real Linux kernel in QEMU, for boot scripts: Debian's cloud kernel
//! (`linux-image-cloud-amd64`, NVMe and ext4 built in, no initramfs
//! needed) boots under TCG with disk images laid out like a cloud image's
//! (GPT: partition 14 BIOS boot, 15 EFI, 1 the root filesystem) as NVMe
//! drives whose serials are EBS volume ids, exactly what a Nitro instance
//! shows. Drives can be attached after the boot through QMP (`device_add`),
//! as spotkeeper attaches volumes to a running instance.
//!
//! The systems on the disks are built here without root and without a
//! network: busybox (Debian's `busybox-static`) for the shell and the small
//! tools, and the host's own util-linux and e2fsprogs programs (with the
//! libraries they load) where a boot script needs the real ones (`blkid -p`,
//! `mkfs.ext4`, `tune2fs`, `sfdisk`). `scripts/setup` installs all of it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A kernel to boot: its image and its release (`uname -r`).
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `/boot/vmlinuz-…`.
    pub image: PathBuf,
    /// What `uname -r` says under it.
    pub release: String,
}

/// The newest Debian cloud kernel in /boot (`linux-image-cloud-amd64`).
pub fn kernel() -> Kernel {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64"))
        })
        .collect();
    found.sort();
    let image = found.pop().unwrap_or_else(|| {
        panic!("no /boot/vmlinuz-*-cloud-amd64: run scripts/setup (installs Debian's linux-image-cloud-amd64)")
    });
    let release = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("named vmlinuz-RELEASE")
        .to_owned();
    Kernel { image, release }
}

fn host_program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/setup");
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("directory");
    }
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// The real programs a boot script needs beside busybox's applets.
pub const REAL_TOOLS: [&str; 5] = ["blkid", "mke2fs", "e2fsck", "tune2fs", "sfdisk"];

/// A system tree to put on a disk: busybox and its applets in /bin, the
/// host's [`REAL_TOOLS`] (and their libraries) in /usr/sbin, `mkfs.ext4`,
/// an `/etc/system-name` saying which disk this is, `init` as /sbin/init,
/// and `/lib/modules/RELEASE` for each of `modules`.
pub fn system_tree(dir: &Path, name: &str, init: &str, modules: &[&str]) {
    for d in [
        "bin", "sbin", "usr/sbin", "usr/bin", "etc", "proc", "sys", "dev", "tmp", "mnt", "run",
        "var/lib",
    ] {
        std::fs::create_dir_all(dir.join(d)).expect("tree");
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("busybox is not installed: run scripts/setup (Debian's busybox-static)")
        });
    std::fs::copy(busybox, dir.join("bin/busybox")).expect("busybox");
    for applet in run(Command::new(busybox).arg("--list")).lines() {
        if applet == "busybox" || REAL_TOOLS.contains(&applet) {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
    }
    for tool in REAL_TOOLS {
        copy_program(dir, &host_program(tool), &format!("usr/sbin/{tool}"));
    }
    std::os::unix::fs::symlink("mke2fs", dir.join("usr/sbin/mkfs.ext4")).expect("mkfs.ext4");
    if Path::new("/etc/mke2fs.conf").exists() {
        std::fs::copy("/etc/mke2fs.conf", dir.join("etc/mke2fs.conf")).expect("mke2fs.conf");
    }
    std::fs::write(dir.join("etc/system-name"), format!("{name}\n")).expect("name");
    std::fs::write(
        dir.join("etc/fstab"),
        "LABEL=cloudimg-rootfs / ext4 defaults 0 1\n",
    )
    .expect("fstab");
    for release in modules {
        let m = dir.join("lib/modules").join(release);
        std::fs::create_dir_all(&m).expect("modules");
        std::fs::write(m.join("modules.dep"), "").expect("modules.dep");
    }
    write_executable(&dir.join("sbin/init"), init);
}

/// Puts the host's `program` at `to` (a path under `root`, without the
/// leading slash), with every library it loads: a program as an image that
/// already has it carries it.
pub fn install_program(root: &Path, program: &Path, to: &str) {
    if let Some(dir) = root.join(to).parent() {
        std::fs::create_dir_all(dir).expect("directory");
    }
    copy_program(root, program, to);
}

/// The network drivers of the test machines' NIC (virtio-net on PCI, as a
/// distribution's kernel has them: modules) and what they need.
const NETWORK_MODULES: [&str; 2] = ["virtio_pci", "virtio_net"];

/// Gives the system in `dir` a network, as a distribution's image has one:
/// the host's modules for [`NETWORK_MODULES`] (and those they depend on,
/// from the host's `modules.dep`) under `/lib/modules/RELEASE`, named in
/// `/etc/modules`, which [`TEST_INIT`] loads before it brings up `eth0` on
/// QEMU's user network ([`Vm::boot_networked`]).
pub fn network_modules(dir: &Path, kernel: &Kernel) {
    let host = Path::new("/lib/modules").join(&kernel.release);
    let deps = std::fs::read_to_string(host.join("modules.dep")).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (Debian's linux-image-cloud-amd64 installs it: run scripts/setup)",
            host.display()
        )
    });
    let module_of = |path: &str| {
        Path::new(path)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned()
    };
    let mut lines = Vec::new();
    let mut found = 0;
    for line in deps.lines() {
        let (module, needs) = line.split_once(':').unwrap_or((line, ""));
        if !NETWORK_MODULES.contains(&module_of(module).as_str()) {
            continue;
        }
        found += 1;
        for file in std::iter::once(module).chain(needs.split_whitespace()) {
            let to = dir.join("lib/modules").join(&kernel.release).join(file);
            std::fs::create_dir_all(to.parent().expect("a directory")).expect("modules");
            std::fs::copy(host.join(file), &to)
                .unwrap_or_else(|e| panic!("{}: {e}", host.join(file).display()));
            let own = deps
                .lines()
                .find(|l| l.split(':').next() == Some(file))
                .unwrap_or_else(|| panic!("{file} is not in modules.dep"));
            lines.push(own.to_owned());
        }
    }
    assert_eq!(
        found,
        NETWORK_MODULES.len(),
        "the kernel {} lacks a network module",
        kernel.release
    );
    lines.sort();
    lines.dedup();
    let modules = dir.join("lib/modules").join(&kernel.release);
    std::fs::write(modules.join("modules.dep"), lines.join("\n") + "\n").expect("modules.dep");
    std::fs::write(dir.join("etc/modules"), NETWORK_MODULES.join("\n") + "\n")
        .expect("/etc/modules");
}

/// Copies a dynamically linked program and every library `ldd` names to the
/// same paths under `root`.
fn copy_program(root: &Path, program: &Path, to: &str) {
    std::fs::copy(program, root.join(to)).expect("program");
    let mut perms = std::fs::metadata(root.join(to))
        .expect("copied")
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(root.join(to), perms).expect("chmod");
    for line in run(Command::new("ldd").arg(program)).lines() {
        let lib = match line.split("=>").nth(1) {
            Some(rest) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        let Some(lib) = lib.filter(|l| l.starts_with('/')) else {
            continue;
        };
        let dest = root.join(lib.trim_start_matches('/'));
        if !dest.exists() {
            std::fs::create_dir_all(dest.parent().expect("a directory")).expect("lib dir");
            std::fs::copy(lib, &dest).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
    }
}

/// What identifies a disk and its root filesystem. A volume made from an
/// image's snapshot has all of the image disk's: that is the point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    /// The GPT disk GUID.
    pub disk: String,
    /// Partition UUID of partition 1 (the root).
    pub root_part: String,
    /// Filesystem UUID of the root.
    pub fs_uuid: String,
    /// Filesystem label of the root.
    pub label: String,
}

impl DiskIds {
    /// The identities of Ubuntu's cloud image, in this test's make-believe.
    pub fn cloud_image() -> Self {
        Self {
            disk: "5a1e0000-0000-4000-8000-00000000d15c".into(),
            root_part: "5a1e0000-0000-4000-8000-000000000001".into(),
            fs_uuid: "5a1e0000-0000-4000-8000-0000000000f5".into(),
            label: "cloudimg-rootfs".into(),
        }
    }
}

const SECTOR: u64 = 512;
const ROOT_START: u64 = 65536;
/// The smallest root filesystem: 64 MiB.
const ROOT_SECTORS: u64 = 131072;
const ESP_START: u64 = 10240;
const ESP_SECTORS: u64 = 16384;

/// A disk laid out like Ubuntu's cloud image: GPT, partition 14 (BIOS boot)
/// first on the disk, 15 (EFI, vfat labelled UEFI, empty), and 1, the root
/// filesystem (ext4) made from `tree`, last, with the identities `ids`.
pub fn cloud_disk(tree: &Path, ids: &DiskIds, out: &Path) {
    let dir = out.parent().expect("a directory");
    let root = dir.join(format!("{}.root.ext4", file_stem(out)));
    let _ = std::fs::remove_file(&root);
    // Room for the tree and half as much again, in whole MiB.
    let root_sectors = ROOT_SECTORS.max((tree_bytes(tree) * 3 / 2 / SECTOR).next_multiple_of(2048));
    run(Command::new("truncate")
        .arg("-s")
        .arg((root_sectors * SECTOR).to_string())
        .arg(&root));
    run(Command::new(host_program("mke2fs"))
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            &ids.label,
            "-U",
            &ids.fs_uuid,
            "-d",
        ])
        .arg(tree)
        .arg(&root));
    let esp = dir.join(format!("{}.esp.vfat", file_stem(out)));
    let _ = std::fs::remove_file(&esp);
    run(Command::new("truncate")
        .arg("-s")
        .arg((ESP_SECTORS * SECTOR).to_string())
        .arg(&esp));
    run(Command::new(host_program("mkfs.vfat"))
        .args(["-n", "UEFI"])
        .arg(&esp));
    let _ = std::fs::remove_file(out);
    run(Command::new("truncate")
        .arg("-s")
        .arg(((ROOT_START + root_sectors + 2048) * SECTOR).to_string())
        .arg(out));
    let layout = format!(
        "label: gpt\nlabel-id: {disk}\nfirst-lba: 2048\n\
         1 : start={ROOT_START}, size={root_sectors}, type=0FC63DAF-8483-4772-8E79-3D69C7A2BA5B, uuid={root}\n\
         14 : start=2048, size=8192, type=21686148-6449-6E6F-744E-656564454649\n\
         15 : start={ESP_START}, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC3B8\n",
        disk = ids.disk,
        root = ids.root_part,
    );
    let mut sfdisk = Command::new(host_program("sfdisk"))
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sfdisk");
    sfdisk
        .stdin
        .take()
        .expect("stdin")
        .write_all(layout.as_bytes())
        .expect("layout");
    let done = sfdisk.wait_with_output().expect("sfdisk");
    assert!(
        done.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    for (part, start) in [(&root, ROOT_START), (&esp, ESP_START)] {
        run(Command::new("dd")
            .arg(format!("if={}", part.display()))
            .arg(format!("of={}", out.display()))
            .arg("bs=512")
            .arg(format!("seek={start}"))
            .args(["conv=notrunc", "status=none"]));
        let _ = std::fs::remove_file(part);
    }
}

/// The bytes of the regular files under `dir` (symbolic links not followed).
fn tree_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("disk")
        .to_owned()
}

/// What the disk image `disk` says of its partition 1 now: (partition UUID,
/// filesystem UUID, label), read from the host.
pub fn root_ids(disk: &Path) -> (String, String, String) {
    let part = run(Command::new(host_program("sfdisk"))
        .arg("--part-uuid")
        .arg(disk)
        .arg("1"))
    .trim()
    .to_ascii_lowercase();
    let probe = |tag: &str| {
        run(Command::new(host_program("blkid"))
            .args(["-p", "-o", "value", "-s", tag, "-O"])
            .arg((ROOT_START * SECTOR).to_string())
            .arg(disk))
        .trim()
        .to_owned()
    };
    (part, probe("UUID"), probe("LABEL"))
}

/// A blank volume of `mib` MiB (all zeros, as a new EBS volume reads).
pub fn blank_disk(out: &Path, mib: u64) {
    let _ = std::fs::remove_file(out);
    run(Command::new("truncate")
        .arg("-s")
        .arg(format!("{mib}M"))
        .arg(out));
}

/// The seed drive the test systems' init reads as its cloud-init data
/// source (serial `cidata`): the instance id on the first line, then the
/// user data.
pub fn seed_disk(out: &Path, instance: &str, user_data: &str) {
    let mut bytes = format!("{instance}\n{user_data}").into_bytes();
    bytes.resize(bytes.len().div_ceil(4096).max(1) * 4096 + 4096, 0);
    std::fs::write(out, bytes).expect("seed");
}

/// The init of the test systems: mounts the kernel filesystems, says which
/// system it is and what its root is, runs the seed drive's user data once
/// per instance (as cloud-init's per-instance scripts do: the instance is
/// marked before its user data runs, so a reboot from it does not repeat
/// it), then powers off, or reboots when something asked for it.
pub const TEST_INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -o remount,rw /
# Filesystems go read-only before the machine stops, as a distribution's
# shutdown leaves them (no journal to replay at the next boot).
settle() {
    sync
    for m in $(awk '$1 ~ /^\/dev\// { print $2 }' /proc/self/mounts); do
        mount -o remount,ro "$m" 2>/dev/null
    done
}
# A reboot asked of init (busybox's reboot signals PID 1, as systemctl asks
# systemd) happens once the running command is done.
trap 'echo "test-init: rebooting"; settle; reboot -f' TERM
echo "test-init: $(cat /etc/system-name) system on $(awk '$2 == "/" { d = $1 } END { print d }' /proc/self/mounts), kernel $(uname -r)"
echo "test-init: / in /etc/fstab: $(awk '$1 !~ /^#/ && $2 == "/" { print $1 }' /etc/fstab)"
# The network, as a distribution brings it up: the drivers /etc/modules
# names, then the address QEMU's user network gives (the host is 10.0.2.2).
for m in $(cat /etc/modules 2>/dev/null); do modprobe "$m" || echo "test-init: no module $m"; done
if [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip link set eth0 up
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
    echo "test-init: network up"
fi
for s in /sys/block/nvme*/device/serial; do
    [ "$(tr -d ' ' < "$s")" = cidata ] && seed=/dev/$(basename "$(dirname "$(dirname "$s")")")
done
if [ -n "${seed:-}" ]; then
    mkdir -p /var/lib/cloud
    tr -d '\000' < "$seed" > /var/lib/cloud/seed
    id=$(head -n 1 /var/lib/cloud/seed)
    if [ "$(cat /var/lib/cloud/instance-id 2>/dev/null)" != "$id" ]; then
        echo "$id" > /var/lib/cloud/instance-id
        tail -n +2 /var/lib/cloud/seed > /var/lib/cloud/user-data
        chmod 700 /var/lib/cloud/user-data
        sync
        echo "test-init: running the user data of instance $id"
        /var/lib/cloud/user-data
        echo "test-init: the user data exited $?"
    fi
fi
echo "test-init: powering off"
settle
poweroff -f
"#;

/// A stand-in for systemd's `systemctl` in the test systems (their init is
/// [`TEST_INIT`], not systemd), enough for what a boot script asks:
/// `enable --now UNIT` starts the unit's `ExecStart` in the background,
/// again after `RestartSec` when it exits (`Restart=always`), with the
/// environment of `/etc/instance-environment` (on EC2 a program finds its
/// region and role credentials through the metadata service; here that
/// file names the emulator and the fake metadata service the test runs).
pub const TEST_SYSTEMCTL: &str = r#"#!/bin/sh
case "$1" in
daemon-reload) exit 0 ;;
enable) [ "$2" = --now ] || exit 0 ;;
*) echo "systemctl: $1 is not known here" >&2; exit 1 ;;
esac
unit=/etc/systemd/system/$3
[ -f "$unit" ] || { echo "systemctl: no unit $3" >&2; exit 1; }
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
pause=$(sed -n 's/^RestartSec=//p' "$unit")
(
    set -a
    [ -f /etc/instance-environment ] && . /etc/instance-environment
    set +a
    while :; do
        # Word splitting is how systemd reads ExecStart too (no quotes here).
        # shellcheck disable=SC2086
        $exec_start < /dev/null
        echo "systemctl: $3 exited $?; again in ${pause:-1}s" >&2
        sleep "${pause:-1}"
    done
) &
echo "systemctl: started $3"
"#;

/// A drive of a [`Vm`]: a raw image file shown as an NVMe drive with
/// `serial`, present from the boot or attached later ([`Vm::attach`]).
#[derive(Debug, Clone)]
pub struct Drive {
    /// QEMU's id for it.
    pub id: String,
    /// The image file.
    pub file: PathBuf,
    /// The NVMe serial (an EBS volume id without its dash).
    pub serial: String,
    /// Present when the kernel starts.
    pub at_boot: bool,
}

impl Drive {
    /// A drive present from the boot.
    pub fn new(id: &str, file: &Path, serial: &str) -> Self {
        Self {
            id: id.to_owned(),
            file: file.to_path_buf(),
            serial: serial.to_owned(),
            at_boot: true,
        }
    }

    /// The same drive, attached only later.
    pub fn later(mut self) -> Self {
        self.at_boot = false;
        self
    }
}

/// One boot of a machine in QEMU (TCG, no network unless asked, serial
/// console read line by line); killed when dropped.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    console: Arc<(Mutex<(String, bool)>, Condvar)>,
    qmp: UnixStream,
    drives: Vec<Drive>,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Boots `kernel` with `cmdline` and the drives.
    pub fn boot(kernel: &Kernel, cmdline: &str, drives: &[Drive]) -> Self {
        Self::start(kernel, cmdline, drives, false)
    }

    /// [`Vm::boot`] with a NIC (virtio-net) on QEMU's user network: the
    /// guest is 10.0.2.15 and reaches the host's loopback at 10.0.2.2, so a
    /// server the test started on 127.0.0.1:PORT is 10.0.2.2:PORT to the
    /// guest. Nothing else is reachable from a test's loopback-only network
    /// namespace; the guest is never told of anything else.
    pub fn boot_networked(kernel: &Kernel, cmdline: &str, drives: &[Drive]) -> Self {
        Self::start(kernel, cmdline, drives, true)
    }

    fn start(kernel: &Kernel, cmdline: &str, drives: &[Drive], network: bool) -> Self {
        let dir = tempfile::tempdir().expect("a directory for QMP");
        let qmp_path = dir.path().join("qmp.sock");
        let mut cmd = Command::new(host_program("qemu-system-x86_64"));
        cmd.args([
            "-nodefaults",
            "-no-user-config",
            "-machine",
            "pc",
            "-accel",
            "tcg",
        ])
        .args(["-cpu", "max", "-m", "256", "-smp", "1", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-append")
        .arg(cmdline);
        if network {
            cmd.args([
                "-netdev",
                "user,id=net0",
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
            ]);
        }
        for d in drives {
            cmd.arg("-drive").arg(format!(
                "if=none,id={},file={},format=raw,cache=unsafe",
                d.id,
                d.file.display()
            ));
            if d.at_boot {
                cmd.arg("-device").arg(format!(
                    "nvme,drive={0},serial={1},id=dev-{0}",
                    d.id, d.serial
                ));
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start QEMU ({e}): run scripts/setup (qemu-system-x86)")
            });
        let console = Arc::new((Mutex::new((String::new(), false)), Condvar::new()));
        let out = child.stdout.take().expect("stdout");
        let shared = Arc::clone(&console);
        std::thread::spawn(move || {
            let mut out = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = out.read_until(b'\n', &mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut c = lock.lock().expect("console");
                if n == 0 {
                    c.1 = true;
                    cv.notify_all();
                    return;
                }
                c.0.push_str(&String::from_utf8_lossy(&buf).replace('\r', ""));
                cv.notify_all();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let qmp = loop {
            match UnixStream::connect(&qmp_path) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("QEMU's QMP socket: {e}"),
            }
        };
        let mut vm = Self {
            child,
            console,
            qmp,
            drives: drives.to_vec(),
            _dir: dir,
        };
        vm.qmp_command(r#"{"execute": "qmp_capabilities"}"#);
        vm
    }

    fn qmp_command(&mut self, command: &str) {
        self.qmp
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        writeln!(self.qmp, "{command}").expect("QMP write");
        let mut reader = BufReader::new(self.qmp.try_clone().expect("QMP clone"));
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("QMP read");
            assert!(!line.contains("\"error\""), "QMP {command}: {line}");
            if line.contains("\"return\"") {
                return;
            }
            assert!(!line.is_empty(), "QMP closed during {command}");
        }
    }

    /// Attaches a drive declared with [`Drive::later`] (PCI hot plug).
    pub fn attach(&mut self, id: &str) {
        let d = self
            .drives
            .iter()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("no drive {id}"))
            .clone();
        self.qmp_command(&format!(
            r#"{{"execute": "device_add", "arguments": {{"driver": "nvme", "drive": "{0}", "serial": "{1}", "id": "dev-{0}"}}}}"#,
            d.id, d.serial
        ));
    }

    /// Waits until the console shows `text` (true) or the machine stops or
    /// `within` passes (false).
    pub fn wait_for(&self, text: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().expect("console");
        loop {
            if c.0.contains(text) {
                return true;
            }
            let now = Instant::now();
            if c.1 || now >= deadline {
                return false;
            }
            c = cv.wait_timeout(c, deadline - now).expect("console").0;
        }
    }

    /// Waits for the machine to power off or reboot (QEMU exits either
    /// way); returns the whole console. Panics after `within`.
    pub fn finish(mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if self.child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let console = self.console();
                panic!("the machine did not stop within {within:?}; its console:\n{console}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (lock, cv) = &*self.console;
        let mut c = lock.lock().expect("console");
        while !c.1 {
            c = cv
                .wait_timeout(c, Duration::from_secs(5))
                .expect("console")
                .0;
        }
        c.0.clone()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.0.lock().expect("console").0.clone()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
