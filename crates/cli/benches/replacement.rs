//! Benchmark: from a spot interruption warning entering the queue to the
//! replacement's launch call (the new instance is visible) and to the
//! replacement running with its volume attached, over 20 interruptions,
//! against the emulator, with `spotkeeper serve` as a separate process.
//! Prints the median and p95 of both. Not a test: nothing is asserted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use spotkeeper_testkit::{Moto, closed_port};

const ROUNDS: usize = 20;

fn boto(moto: &Moto, code: &str) -> String {
    moto.boto(code).trim().to_owned()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("spotkeeper.toml");
    std::fs::write(
        &config,
        format!(
            "owner = \"bench\"\n[daemon]\ninterval = \"30s\"\n[api]\nlisten = \"127.0.0.1:{}\"\ntoken = \"bench-token-0123456789\"\n[aws]\nregion = \"us-east-1\"\n\
             [box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\", \"t3a.micro\"]\nmax_price = 0.02\n\
             data_volume = {{ name = \"dev-data\", size_gb = 5 }}\nready = {{ check = \"none\" }}\n",
            closed_port()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_spotkeeper");
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin);
        moto.configure(&mut cmd);
        let out = cmd
            .env("SPOTKEEPER_STATE", dir.path().join("state.db"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["setup"]);
    run(&["up", "dev"]);
    let mut serve = Command::new(bin);
    moto.configure(&mut serve);
    let mut serve = serve
        .env("SPOTKEEPER_STATE", dir.path().join("state.db"))
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    std::thread::sleep(Duration::from_secs(2));
    let warning = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/fixtures/events/spot-interruption-warning.json"
    ))
    .expect("fixture");
    let live = || {
        boto(
            &moto,
            "r = ec2.describe_instances(Filters=[{'Name': 'tag:spotkeeper:box', 'Values': ['dev']}, {'Name': 'instance-state-name', 'Values': ['pending', 'running']}])['Reservations']\n\
             print(','.join(i['InstanceId'] for x in r for i in x['Instances']))",
        )
    };
    let attached_to = || {
        boto(
            &moto,
            "v = ec2.describe_volumes(Filters=[{'Name': 'tag:Name', 'Values': ['dev-data']}])['Volumes']\nprint(v[0]['Attachments'][0]['InstanceId'] if v and v[0]['Attachments'] else '')",
        )
    };
    let (mut to_launch, mut to_running) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let old = live();
        let body = warning.replace("i-1234567890abcdef0", &old).replace(
            "12345678-1234-1234-1234-123456789012",
            &format!("bench-{round}"),
        );
        let start = Instant::now();
        boto(
            &moto,
            &format!(
                "sqs = boto3.client('sqs', **kw)\nu = sqs.get_queue_url(QueueName='spotkeeper-bench-events')['QueueUrl']\nsqs.send_message(QueueUrl=u, MessageBody={})\nec2.terminate_instances(InstanceIds=['{old}'])",
                serde_json::to_string(&body).expect("quoted")
            ),
        );
        let deadline = start + Duration::from_secs(120);
        let mut launched = None;
        loop {
            let now = live();
            if launched.is_none() && !now.is_empty() && now != old {
                launched = Some(start.elapsed());
            }
            if launched.is_some() && attached_to() == now {
                to_running.push(start.elapsed().as_secs_f64());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no replacement within 120s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        to_launch.push(launched.expect("launched").as_secs_f64());
    }
    let _ = serve.kill();
    let _ = serve.wait();
    for v in [&mut to_launch, &mut to_running] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "replacement benchmark: {ROUNDS} spot interruptions against the emulator (includes the test's own polling, ~20 ms, and boto3 start-up per round)"
    );
    println!(
        "  warning queued → replacement launched:          median {:.2}s  p95 {:.2}s",
        percentile(&to_launch, 0.5),
        percentile(&to_launch, 0.95)
    );
    println!(
        "  warning queued → running with volume attached:  median {:.2}s  p95 {:.2}s",
        percentile(&to_running, 0.5),
        percentile(&to_running, 0.95)
    );
}
