//! The `tour` example (the library end to end) runs against the emulator.

use std::path::PathBuf;
use std::process::Command;

use spotkeeper_testkit::Moto;

fn example(name: &str) -> PathBuf {
    // target/debug/deps/<this test> → target/debug/examples/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/debug")
        .join("examples")
        .join(name);
    assert!(
        dir.exists(),
        "{} is not built: run the tests with cargo test or cargo nextest (they build examples)",
        dir.display()
    );
    dir
}

#[test]
fn the_tour_example_runs_end_to_end_and_cleans_up() {
    let moto = Moto::start();
    let mut cmd = Command::new(example("tour"));
    moto.configure(&mut cmd);
    let out = cmd.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "launched",
        "is running",
        "added vol-",
        "device index Some(1)",
        "booted from",
        "console log:",
        "is stopped",
        "is running again",
        "snapshots",
        "vpc deleted",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}
