use std::collections::BTreeMap;

use super::*;

fn spec(extra: &str) -> BoxSpec {
    let text = format!(
        "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n{extra}\n"
    );
    crate::config::parse(std::path::Path::new("t.toml"), &text)
        .expect("valid")
        .boxes["dev"]
        .clone()
}

fn instance(id: &str, state: InstanceState, age_secs: u64, now: SystemTime) -> Instance {
    Instance {
        id: InstanceId::new(id),
        instance_type: "t3.micro".into(),
        zone: Some("us-east-1a".into()),
        state,
        market: Market::Spot,
        public_ip: None,
        private_ip: None,
        spot_request_id: None,
        launched_at: Some(now - Duration::from_secs(age_secs)),
        image_id: None,
        subnet_id: None,
        vpc_id: None,
        tags: BTreeMap::from([(tags::BOX.to_owned(), "dev".to_owned())]),
    }
}

fn plan(spec: &BoxSpec, list: &[Instance], doomed: &[&str], settled: Option<&str>) -> Vec<Step> {
    plan_priced(spec, list, doomed, settled, &[])
}

fn plan_priced(
    spec: &BoxSpec,
    list: &[Instance],
    doomed: &[&str],
    settled: Option<&str>,
    prices: &[SpotPrice],
) -> Vec<Step> {
    let now = SystemTime::now();
    let refs: Vec<&Instance> = list.iter().collect();
    let doomed: HashSet<InstanceId> = doomed.iter().map(|d| InstanceId::new(*d)).collect();
    let settled = settled.map(InstanceId::new);
    let long: HashSet<InstanceId> = doomed
        .iter()
        .filter(|d| d.as_str().ends_with("long"))
        .cloned()
        .collect();
    plan_box(
        spec,
        &BoxFacts {
            instances: &refs,
            requests: &[],
            doomed: &doomed,
            long_doomed: &long,
            settled: settled.as_ref(),
            image_check_due: true,
            prices,
            now,
        },
    )
}

fn price(instance_type: &str, zone: &str, price: f64) -> SpotPrice {
    SpotPrice {
        instance_type: instance_type.into(),
        zone: zone.into(),
        price,
    }
}

#[test]
fn a_box_over_its_ceiling_moves_only_when_there_is_somewhere_under_it() {
    let now = SystemTime::now();
    let a = instance("i-a", InstanceState::Running, 3600, now);
    let over = [
        price("t3.micro", "us-east-1a", 0.05),
        price("t3.micro", "us-east-1b", 0.01),
    ];
    assert_eq!(
        plan_priced(&spec(""), std::slice::from_ref(&a), &[], Some("i-a"), &over),
        vec![Step::OverCeiling {
            instance: InstanceId::new("i-a"),
            price: 0.05
        }]
    );
    // Everything over the ceiling: nowhere better, the box stays.
    let all_over = [
        price("t3.micro", "us-east-1a", 0.05),
        price("t3.micro", "us-east-1b", 0.04),
    ];
    assert!(
        plan_priced(
            &spec(""),
            std::slice::from_ref(&a),
            &[],
            Some("i-a"),
            &all_over
        )
        .is_empty()
    );
    // Under the ceiling: nothing to do.
    let fine = [price("t3.micro", "us-east-1a", 0.01)];
    assert!(plan_priced(&spec(""), std::slice::from_ref(&a), &[], Some("i-a"), &fine).is_empty());
    // A volume keeps the box in its zone: a cheaper zone elsewhere does not count.
    let pinned = spec("data_volume = { name = \"d\", size_gb = 1 }");
    assert!(plan_priced(&pinned, std::slice::from_ref(&a), &[], Some("i-a"), &over).is_empty());
    // Subnets keep it in its zone unless `zones` says where they are.
    let in_subnets = spec("subnets = [\"subnet-a\", \"subnet-b\"]");
    assert!(
        plan_priced(
            &in_subnets,
            std::slice::from_ref(&a),
            &[],
            Some("i-a"),
            &over
        )
        .is_empty()
    );
    let listed =
        spec("subnets = [\"subnet-a\", \"subnet-b\"]\nzones = [\"us-east-1a\", \"us-east-1b\"]");
    assert_eq!(
        plan_priced(&listed, std::slice::from_ref(&a), &[], Some("i-a"), &over).len(),
        1
    );
    // AWS holds the ceiling itself.
    let aws = spec("price_cap = \"aws\"");
    assert!(plan_priced(&aws, std::slice::from_ref(&a), &[], Some("i-a"), &over).is_empty());
}

#[test]
fn a_box_without_instances_is_launched() {
    assert_eq!(plan(&spec(""), &[], &[], None), vec![Step::Launch]);
}

#[test]
fn a_doomed_instance_does_not_count_and_a_pending_one_is_waited_for() {
    let now = SystemTime::now();
    let old = instance("i-old", InstanceState::Running, 3600, now);
    assert_eq!(
        plan(&spec(""), std::slice::from_ref(&old), &["i-old"], None),
        vec![Step::Launch]
    );
    let new = instance("i-new", InstanceState::Pending, 1, now);
    assert_eq!(
        plan(&spec(""), &[old, new], &["i-old"], None),
        vec![Step::Wait(InstanceId::new("i-new"))]
    );
}

#[test]
fn a_running_box_is_settled_once_then_its_replaced_instance_retired() {
    let now = SystemTime::now();
    let old = instance("i-old", InstanceState::Running, 3600, now);
    let new = instance("i-new", InstanceState::Running, 10, now);
    let both = [old, new];
    assert_eq!(
        plan(&spec(""), &both, &["i-old"], None),
        vec![Step::Settle(InstanceId::new("i-new"))],
        "nothing retired before the replacement is settled"
    );
    assert_eq!(
        plan(&spec(""), &both, &["i-old"], Some("i-new")),
        vec![Step::Retire(vec![InstanceId::new("i-old")])]
    );
}

#[test]
fn a_replaced_instance_goes_after_a_bound_even_if_its_replacement_never_settles() {
    let now = SystemTime::now();
    let old = instance("i-00000000000long", InstanceState::Running, 7200, now);
    let new = instance("i-new", InstanceState::Running, 3600, now);
    assert_eq!(
        plan(&spec(""), &[old, new], &["i-00000000000long"], None),
        vec![
            Step::Retire(vec![InstanceId::new("i-00000000000long")]),
            Step::Settle(InstanceId::new("i-new"))
        ]
    );
}

#[test]
fn duplicates_go_only_after_the_grace_period_and_the_oldest_stays() {
    let now = SystemTime::now();
    let a = instance("i-a", InstanceState::Running, 3600, now);
    let young = instance("i-b", InstanceState::Running, 5, now);
    assert_eq!(
        plan(&spec(""), &[a.clone(), young], &[], Some("i-a")),
        Vec::<Step>::new()
    );
    let old = instance("i-c", InstanceState::Running, 1800, now);
    assert_eq!(
        plan(&spec(""), &[old, a], &[], Some("i-a")),
        vec![Step::TerminateDuplicates {
            keep: InstanceId::new("i-a"),
            extra: vec![InstanceId::new("i-c")]
        }]
    );
}

#[test]
fn the_image_schedule_and_the_way_back_to_spot_are_tasks_of_a_settled_box() {
    let now = SystemTime::now();
    let a = instance("i-a", InstanceState::Running, 3600, now);
    assert_eq!(
        plan(
            &spec("images = { every = \"1h\" }"),
            std::slice::from_ref(&a),
            &[],
            Some("i-a")
        ),
        vec![Step::Image(InstanceId::new("i-a"))]
    );
    let mut od = a;
    od.market = Market::OnDemand;
    assert_eq!(
        plan(&spec("fallback = \"on-demand\""), &[od], &[], Some("i-a")),
        vec![Step::BackToSpot(InstanceId::new("i-a"))]
    );
}
