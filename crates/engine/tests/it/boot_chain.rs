//! The generated boot scripts, run for real: as root, in throwaway mount
//! namespaces, against loop devices standing in for EBS volumes (an ext4
//! image file), with a fake sysfs giving them NVMe serials like Nitro's.
//! They need root, so they are `#[ignore]`d: `scripts/test` runs them with
//! `--run-ignored all` when root (CI is); without root they are reported
//! as ignored, and forced to run they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use spotkeeper_engine::bootstrap::{BootData, BootVolumes, user_data};

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// The root-only tests are `#[ignore]`d, so a plain `cargo test` as a user
/// skips them visibly ("ignored"); `scripts/test` runs them when root (CI
/// is), and run without root they fail rather than pass silently.
macro_rules! require_root {
    () => {
        assert!(
            is_root(),
            "the boot chain tests need root (loop devices, mount namespaces, pivot_root)"
        );
    };
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loop device over an image file; detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(image: &Path) -> Self {
        let out = run(Command::new("losetup").args(["-f", "--show"]).arg(image));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// A fake /sys/block and /dev where `nvme` has the EBS serial of `volume`.
fn fake_nitro(t: &Path, nvme: &str, volume: &str, device: &str) {
    let dev_dir = t.join("sys/block").join(nvme).join("device");
    std::fs::create_dir_all(&dev_dir).expect("fake sysfs");
    std::fs::write(
        dev_dir.join("serial"),
        format!("{}   \n", volume.replace('-', "")),
    )
    .expect("serial");
    std::fs::create_dir_all(t.join("dev")).expect("fake dev");
    std::os::unix::fs::symlink(device, t.join("dev").join(nvme)).expect("device link");
}

fn shellcheck(script: &Path) {
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(script)
        .output()
        .unwrap_or_else(|e| panic!("shellcheck is not installed ({e}): run scripts/setup"));
    assert!(
        out.status.success(),
        "shellcheck {}:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

fn in_namespace(script: &str, env: &[(&str, PathBuf)]) -> Output {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("unshare")
}

/// The data volume script's settings for a test tree under `t` (fake
/// sysfs, /dev and rootfs).
fn data_env(t: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("SK_SYS_BLOCK", t.join("sys/block")),
        ("SK_DEV_DIR", t.join("dev")),
        ("SK_BYID_DIR", t.join("no-by-id")),
        ("SK_ROOTFS", t.join("rootfs")),
        ("SK_STATE_DIR", PathBuf::from("/state")),
        ("SK_WAIT_SECONDS", PathBuf::from("10")),
    ]
}

/// Runs the boot script `path` in the namespace, which must succeed;
/// returns its log and what the user script wrote to `t/out`.
fn boot(path: &Path, env: &[(&str, PathBuf)], t: &Path) -> (String, String) {
    let run = in_namespace(&format!("sh {}", path.display()), env);
    let log = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{log}");
    let out = std::fs::read_to_string(t.join("out")).expect("user script ran");
    (log, out.trim().to_owned())
}

/// Writes the boot script of a box whose data volume `volume` (`new`:
/// spotkeeper created it empty) mounts at `mount`, with the user's script
/// `user`; returns its path.
fn data_script(t: &Path, volume: &str, mount: &Path, new: bool, user: &str) -> PathBuf {
    let volumes = BootVolumes {
        data: Some(BootData {
            volume: volume.into(),
            device: "/dev/sdf".into(),
            mount: mount.display().to_string(),
            new,
        }),
        root: None,
        agent: None,
    };
    let script = user_data("dev", &volumes, Some(user))
        .expect("generate")
        .expect("some");
    let path = t.join("user-data.sh");
    std::fs::write(&path, &script).expect("write");
    path
}

/// The text of the here-document `name` in the boot template.
fn here_document(name: &str) -> &'static str {
    let t = spotkeeper_engine::bootstrap::BOOT_TEMPLATE;
    let start = t
        .find(&format!("<<'{name}'\n"))
        .unwrap_or_else(|| panic!("no here-document {name}"))
        + name.len()
        + 4;
    let len = t[start..]
        .find(&format!("\n{name}\n"))
        .unwrap_or_else(|| panic!("here-document {name} has no end"));
    &t[start..=start + len]
}

#[test]
fn the_boot_template_and_the_init_it_installs_pass_shellcheck() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("boot.sh");
    std::fs::write(&path, spotkeeper_engine::bootstrap::BOOT_TEMPLATE).expect("write");
    shellcheck(&path);
    // The init is written from here-documents at boot (shellcheck does not
    // look inside them in the template): assembled here as write_shim does.
    let shim = dir.path().join("init");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nSK_ROOT_VOLUME=vol-1\nSK_ROOT_DEVICE=/dev/sdg\n{}{}",
            here_document("LIB"),
            here_document("SHIM")
        ),
    )
    .expect("write");
    shellcheck(&shim);
}

#[test]
#[ignore = "needs root; scripts/test runs it when root"]
fn data_volume_script_makes_a_filesystem_once_mounts_it_and_then_runs_the_users_script() {
    require_root!();
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path();
    let img = t.join("data.img");
    run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
    let lo = Loop::attach(&img);
    fake_nitro(t, "nvme1n1", "vol-0abc1230000000001", &lo.0);
    std::fs::create_dir_all(t.join("rootfs/etc")).expect("rootfs");
    std::fs::write(t.join("rootfs/etc/fstab"), "# test fstab\n").expect("fstab");
    let mount = t.join("mnt/data");
    let user = format!(
        "#!/bin/sh\nset -e\ncat {m}/greeting 2>/dev/null > {t}/out || echo none > {t}/out\necho hello > {m}/greeting\n",
        m = mount.display(),
        t = t.display()
    );
    let path = data_script(t, "vol-0abc1230000000001", &mount, true, &user);
    shellcheck(&path);

    let env = data_env(t);
    let (log, out) = boot(&path, &env, t);
    assert!(
        log.contains("is new and blank; creating an ext4 filesystem"),
        "{log}"
    );
    assert_eq!(out, "none");

    let (log, out) = boot(&path, &env, t);
    assert!(
        log.contains("has a filesystem; keeping it"),
        "no second mkfs: {log}"
    );
    assert_eq!(out, "hello", "the data survived");
    let fstab = std::fs::read_to_string(t.join("rootfs/etc/fstab")).expect("fstab");
    assert_eq!(
        fstab.matches("UUID=").count(),
        1,
        "one fstab entry: {fstab}"
    );
    assert!(
        fstab.contains(&format!("{} auto defaults,nofail", mount.display())),
        "{fstab}"
    );
}

/// Runs the data volume script over a 64 MiB image prepared by `fill`,
/// with the volume `new` or not and `blkid` replaced by `fake_blkid` (a
/// shell body) when given. Returns the log, whether it succeeded, whether
/// the user's script ran and whether blkid finds a filesystem afterwards.
fn data_boot(new: bool, fill: &[u8], fake_blkid: Option<&str>) -> (String, bool, bool, bool) {
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path();
    let img = t.join("data.img");
    run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
    if !fill.is_empty() {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .expect("image");
        f.seek(std::io::SeekFrom::Start(4096)).expect("seek");
        f.write_all(fill).expect("fill");
    }
    let lo = Loop::attach(&img);
    fake_nitro(t, "nvme1n1", "vol-0abc1230000000002", &lo.0);
    let mount = t.join("mnt/data");
    let user = format!(
        "#!/bin/sh
touch {}/user-ran
",
        t.display()
    );
    let path = data_script(t, "vol-0abc1230000000002", &mount, new, &user);
    let bin = t.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    if let Some(body) = fake_blkid {
        std::fs::write(
            bin.join("blkid"),
            format!(
                "#!/bin/sh
{body}
"
            ),
        )
        .expect("fake blkid");
        run(Command::new("chmod").arg("755").arg(bin.join("blkid")));
    }
    let path_var = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = data_env(t);
    env.push(("PATH", PathBuf::from(path_var)));
    let out = in_namespace(&format!("sh {}", path.display()), &env);
    let has_fs = Command::new("blkid")
        .arg("-p")
        .arg(&lo.0)
        .output()
        .expect("blkid")
        .status
        .success();
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
        t.join("user-ran").exists(),
        has_fs,
    )
}

#[test]
#[ignore = "needs root; scripts/test runs it when root"]
fn a_data_volume_is_formatted_only_when_known_new_never_because_blkid_failed() {
    require_root!();
    // Blank, but not known to be new (another box used it, or spotkeeper
    // did not create it empty): left as it is, and the user's data does not run.
    let (log, ok, user_ran, has_fs) = data_boot(false, &[], None);
    assert!(!ok && !user_ran && !has_fs, "{log}");
    assert!(
        log.contains("it is not known to be new; not formatting it"),
        "{log}"
    );

    // New, but something was written on it that blkid does not know.
    let (log, ok, user_ran, has_fs) = data_boot(true, b"precious bytes", None);
    assert!(!ok && !user_ran && !has_fs, "{log}");
    assert!(log.contains("holds data blkid does not recognise"), "{log}");

    // New and blank, but blkid fails (cannot read the device, is missing...).
    for fake in ["exit 4", "echo 'blkid: I/O error' >&2; exit 1"] {
        let (log, ok, user_ran, has_fs) = data_boot(true, &[], Some(fake));
        assert!(!ok && !user_ran && !has_fs, "{fake}: {log}");
        assert!(log.contains("blkid could not read"), "{fake}: {log}");
    }

    // New and blank: formatted, mounted, the user's data runs.
    let (log, ok, user_ran, has_fs) = data_boot(true, &[], None);
    assert!(ok && user_ran && has_fs, "{log}");
}

#[test]
#[ignore = "needs root; scripts/test runs it when root"]
fn persistent_root_installs_a_shim_that_pivot_roots_into_the_volume() {
    require_root!();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| {
            panic!("busybox is not installed: run scripts/setup (Debian's busybox-static)")
        });
    let dir = tempfile::tempdir().expect("dir");
    let t = dir.path();
    std::fs::write(t.join("marker"), "host").expect("marker");

    // The persistent volume: a tiny system whose init records what it sees.
    let vol = t.join("vol");
    for d in ["bin", "sbin", "etc"] {
        std::fs::create_dir_all(vol.join(d)).expect("dirs");
    }
    std::fs::copy(busybox, vol.join("bin/busybox")).expect("busybox");
    std::os::unix::fs::symlink("busybox", vol.join("bin/sh")).expect("sh");
    std::fs::write(vol.join("etc/volume-id"), "persistent-volume\n").expect("id");
    let init = format!(
        "#!/bin/sh\nread -r id < /etc/volume-id\nold=no\n[ -e /old-root{t}/marker ] && old=yes\n\
         printf 'root=%s old-root=%s args=%s\\n' \"$id\" \"$old\" \"$*\" > /old-root{t}/result\n",
        t = t.display()
    );
    std::fs::write(vol.join("sbin/init"), init).expect("init");
    run(Command::new("chmod")
        .args(["755"])
        .arg(vol.join("sbin/init")));
    let img = t.join("root.img");
    run(Command::new("truncate").args(["-s", "64M"]).arg(&img));
    run(Command::new("mkfs.ext4")
        .args(["-q", "-d"])
        .arg(&vol)
        .arg(&img));
    let lo = Loop::attach(&img);
    fake_nitro(t, "nvme2n1", "vol-0f00d00000000000a", &lo.0);

    // The image's disk, with its own init.
    let ami = t.join("ami");
    std::fs::create_dir_all(ami.join("sbin")).expect("ami");
    std::fs::create_dir_all(ami.join("etc")).expect("ami etc");
    std::fs::write(ami.join("sbin/init"), "#!/bin/sh\necho image-init\n").expect("orig init");
    run(Command::new("chmod")
        .args(["755"])
        .arg(ami.join("sbin/init")));

    let volumes = BootVolumes {
        data: None,
        root: Some(("vol-0f00d00000000000a".into(), "/dev/sdg".into())),
        agent: None,
    };
    let script = user_data("dev", &volumes, None)
        .expect("generate")
        .expect("some");
    let path = t.join("user-data.sh");
    std::fs::write(&path, &script).expect("write");
    shellcheck(&path);
    let env = [
        ("SK_SYS_BLOCK", t.join("sys/block")),
        ("SK_DEV_DIR", t.join("dev")),
        ("SK_BYID_DIR", t.join("no-by-id")),
        ("SK_ROOTFS", ami.clone()),
        ("SK_REBOOT", PathBuf::from("true")),
        ("SK_WAIT_SECONDS", PathBuf::from("10")),
    ];
    let first = in_namespace(&format!("sh {}", path.display()), &env);
    let log = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{log}");
    assert!(log.contains("rebooting into it"), "{log}");
    assert_eq!(
        std::fs::read_to_string(ami.join("sbin/init.spotkeeper-orig")).expect("original kept"),
        "#!/bin/sh\necho image-init\n"
    );
    assert!(ami.join("etc/spotkeeper-image-root").exists());
    let shim = ami.join("sbin/init");
    shellcheck(&shim);

    // The next boot: the shim runs (as PID 1 would) and chain-loads the volume's init.
    let newroot = t.join("newroot");
    let boot = in_namespace(
        &format!("mount --make-rprivate / && exec {} splash", shim.display()),
        &[
            ("SK_SYS_BLOCK", t.join("sys/block")),
            ("SK_DEV_DIR", t.join("dev")),
            ("SK_NEWROOT", newroot),
            ("SK_WAIT_SECONDS", PathBuf::from("5")),
        ],
    );
    let result = std::fs::read_to_string(t.join("result")).unwrap_or_else(|_| {
        panic!(
            "the volume's init did not run:\n{}",
            String::from_utf8_lossy(&boot.stderr)
        )
    });
    assert_eq!(
        result.trim(),
        "root=persistent-volume old-root=yes args=splash"
    );

    // With the volume missing, the shim boots the image's own init instead.
    let fallback = in_namespace(
        &format!("exec {}", shim.display()),
        &[
            ("SK_SYS_BLOCK", t.join("nothing")),
            ("SK_DEV_DIR", t.join("nothing")),
            ("SK_NEWROOT", t.join("unused")),
            ("SK_WAIT_SECONDS", PathBuf::from("1")),
            ("SK_ORIG_INIT", ami.join("sbin/init.spotkeeper-orig")),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&fallback.stdout).trim(),
        "image-init",
        "{}",
        String::from_utf8_lossy(&fallback.stderr)
    );
}
