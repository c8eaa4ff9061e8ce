//! `cost::report` on FakeCloud: on-demand prices come from the Price List
//! once and are cached; a failing Price List makes them unknown (never a
//! guess) and is not asked again on every refresh.

use std::path::Path;

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{Instance, InstanceId, InstanceState, Market, SpotPrice};
use spotkeeper_engine::store::{Store, unix_now};

fn instance(id: &str, market: Market, launched_ago: u64) -> Instance {
    Instance {
        id: InstanceId::new(id),
        instance_type: "t3.micro".into(),
        zone: Some("us-east-1a".into()),
        state: InstanceState::Running,
        market,
        public_ip: None,
        private_ip: None,
        spot_request_id: None,
        launched_at: Some(
            std::time::SystemTime::now() - std::time::Duration::from_secs(launched_ago),
        ),
        image_id: None,
        subnet_id: None,
        vpc_id: None,
        tags: [(tags::BOX.to_owned(), "dev".to_owned())].into(),
    }
}

#[tokio::test]
async fn on_demand_prices_are_asked_once_and_a_failure_is_unknown_not_zero() {
    let config = spotkeeper_engine::config::parse(Path::new("c.toml"), "owner = \"tester\"\n")
        .expect("valid");
    let store = Store::memory().await.expect("store");
    let cloud = FakeCloud::new(&["us-east-1a"]);
    store
        .for_owner("tester")
        .record_seen(&[instance("i-1", Market::Spot, 7200)])
        .await
        .expect("seen");
    store
        .record_prices(
            &[SpotPrice {
                instance_type: "t3.micro".into(),
                zone: "us-east-1a".into(),
                price: 0.003,
            }],
            unix_now() - 7200,
        )
        .await
        .expect("prices");
    let (since, until) = (unix_now() - 86_400, unix_now());

    // The Price List fails: unknown, and not asked again for a while.
    cloud.fail_next("GetProducts", "AccessDeniedException");
    let r = spotkeeper_engine::cost::report(&cloud, &store, &config, since, until)
        .await
        .expect("report");
    assert_eq!(r.total.on_demand_cost, None);
    assert_eq!(r.total.savings, None);
    assert!(
        r.total.cost.is_some_and(|c| c > 0.0),
        "the spot cost is still known"
    );
    spotkeeper_engine::cost::report(&cloud, &store, &config, since, until)
        .await
        .expect("report");
    assert_eq!(
        cloud.count("GetProducts"),
        1,
        "a failure is remembered for an hour"
    );

    // Later (another region key here), it answers: asked once, then cached.
    let fresh = Store::memory().await.expect("store");
    fresh
        .for_owner("tester")
        .record_seen(&[instance("i-1", Market::Spot, 7200)])
        .await
        .expect("seen");
    cloud.set_on_demand_price("t3.micro", 0.0104);
    for _ in 0..3 {
        let r = spotkeeper_engine::cost::report(&cloud, &fresh, &config, since, until)
            .await
            .expect("report");
        assert_eq!(r.on_demand_prices["t3.micro"], Some(0.0104));
    }
    assert_eq!(cloud.count("GetProducts"), 2);
}
