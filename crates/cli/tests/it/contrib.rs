//! `contrib/spotkeeper.service`: systemd accepts it, its command line is one
//! the binary takes, and it waits longer for `serve` to stop than `serve`
//! takes (the SIGTERM tests hold it to 10 s).

use std::process::Command;

const UNIT: &str = include_str!("../../../../contrib/spotkeeper.service");

fn setting<'a>(key: &str) -> &'a str {
    UNIT.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn the_systemd_unit_verifies_runs_serve_and_outwaits_its_stop() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("spotkeeper.service");
    let exec = setting("ExecStart");
    let bin = env!("CARGO_BIN_EXE_spotkeeper");
    std::fs::write(&path, UNIT.replace("/usr/local/bin/spotkeeper", bin)).expect("write");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is not installed ({e}): install systemd"));
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );

    // The command line parses (help instead of running the daemon).
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/spotkeeper"));
    let args: Vec<&str> = words.collect();
    assert_eq!(args.last(), Some(&"serve"), "{exec}");
    let help = Command::new(bin)
        .args(&args)
        .arg("--help")
        .output()
        .expect("run");
    assert!(
        help.status.success(),
        "{}",
        String::from_utf8_lossy(&help.stderr)
    );

    let stop: u64 = setting("TimeoutStopSec").parse().expect("seconds");
    assert!(stop > 10, "TimeoutStopSec={stop} must outwait serve's stop");
    assert_eq!(setting("KillSignal"), "SIGTERM");
    assert_eq!(setting("Restart"), "on-failure");
    assert_eq!(setting("StateDirectoryMode"), "0700");
}

#[test]
fn the_demo_says_it_is_building_and_shows_cargos_progress() {
    // A fake cargo that records how it was called and stops the demo there.
    let dir = tempfile::tempdir().expect("dir");
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    std::fs::write(
        bin.join("cargo"),
        format!(
            "#!/bin/sh\necho \"$*\" > {}/cargo.args\nexit 3\n",
            dir.path().display()
        ),
    )
    .expect("fake cargo");
    Command::new("chmod")
        .arg("755")
        .arg(bin.join("cargo"))
        .status()
        .expect("chmod");
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/demo");
    let out = Command::new("bash")
        .arg(demo)
        .arg("--emulator")
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .expect("run the demo");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("building spotkeeper first") && said.contains("5 min 15 s measured"),
        "{said}"
    );
    let args = std::fs::read_to_string(dir.path().join("cargo.args")).expect("cargo ran");
    assert!(
        args.starts_with("build")
            && !args.contains("--quiet")
            && args.contains("--workspace --bins")
            && !args.contains("--examples"),
        "{args}"
    );
}

/// The demo builds the binaries only, and the tests after it must find every
/// dependency already built with the features they need (nothing built
/// twice). That holds under Cargo.toml's feature resolver 1, which gives a
/// dependency its dev-dependency features in any build; under 2 or 3 a build
/// without tests leaves out e.g. tokio's `test-util`, and the tests rebuilt
/// tokio and the whole SDK above it (3 min 24 s).
#[test]
fn the_demos_build_has_the_features_of_the_tests_build() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--workspace", "--locked", "--offline"])
        .args(["--edges", "normal", "--invert", "tokio", "--depth", "0"])
        .args(["--format", "{f}"])
        .current_dir(root)
        .output()
        .expect("run cargo tree");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.split(',').any(|f| f.trim() == "test-util"),
        "without the tests, tokio is built with {said}: not the tests' feature set"
    );
}
