//! Benchmark: how many AWS calls one full daemon pass makes for a worker pool
//! of 1,000 instances (then 2,000 and 3,000) against the emulator. The pass
//! describes instances and spot requests by tag, one page (≤ 1,000) per call,
//! reads prices once per pool and launches nothing when the pool is at its
//! desired size: the figure should grow with pages of results, not with
//! instances. Prints calls and wall time per pass. Not a test.

use std::time::Instant;

use spotkeeper_cloud::AwsCloud;
use spotkeeper_engine::config;
use spotkeeper_engine::daemon::Daemon;
use spotkeeper_engine::store::Store;
use spotkeeper_testkit::Moto;

const STEP: usize = 1000;

fn add_instances(moto: &Moto, n: usize) {
    // Spot instances of the pool, tagged at creation, in batches.
    moto.boto(&format!(
        "tags = [{{'Key': 'spotkeeper:owner', 'Value': 'bench'}}, {{'Key': 'spotkeeper:pool', 'Value': 'workers'}}]\n\
         left = {n}\n\
         while left:\n    k = min(left, 250)\n    ec2.run_instances(ImageId='ami-0123456789abcdef0', InstanceType='t3.micro', MinCount=k, MaxCount=k,\n\
         \x20       Placement={{'AvailabilityZone': 'us-east-1a'}},\n\
         \x20       InstanceMarketOptions={{'MarketType': 'spot', 'SpotOptions': {{'SpotInstanceType': 'one-time'}}}},\n\
         \x20       TagSpecifications=[{{'ResourceType': 'instance', 'Tags': tags}}, {{'ResourceType': 'spot-instances-request', 'Tags': tags}}])\n    left -= k\n"
    ));
}

fn main() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().expect("dir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    println!("pool pass: AWS calls per full reconcile pass (emulator)");
    println!("{:>10} {:>8} {:>12}", "instances", "calls", "pass time");
    for round in 1..=3 {
        add_instances(&moto, STEP);
        let total = round * STEP;
        // The pool wants exactly what runs: min = max = total, no demand source.
        let text = format!(
            "owner = \"bench\"\n[aws]\nregion = \"us-east-1\"\n[pool.workers]\nimage = \"ami-0123456789abcdef0\"\n\
             instance_types = [ {{ type = \"t3.micro\" }} ]\nzones = [\"us-east-1a\"]\nmin_capacity = {total}\nmax_capacity = {total}\n"
        );
        let config = config::parse(&dir.path().join("spotkeeper.toml"), &text).expect("config");
        runtime.block_on(async {
            let cloud = AwsCloud::connect_emulator(&moto.endpoint(), "us-east-1").await;
            let store = Store::open(&dir.path().join(format!("state-{round}.db")))
                .await
                .expect("store");
            let daemon = Daemon::new(&cloud, &store, &config, dir.path());
            let before = cloud.aws_calls();
            let started = Instant::now();
            let done = daemon.reconcile().await.expect("pass");
            let elapsed = started.elapsed();
            let calls = cloud.aws_calls() - before;
            assert!(done.is_empty(), "the pool was at its size: {done:?}");
            println!(
                "{total:>10} {calls:>8} {:>10.0}ms",
                elapsed.as_secs_f64() * 1000.0
            );
        });
    }
}
