//! Box lifecycle logic the emulator cannot show (it has one constant price and
//! ignores client tokens), proved on the in-memory FakeCloud.

use spotkeeper_cloud::prelude::*;
use std::path::Path;
use std::time::{Duration, SystemTime};

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{
    Instance, InstanceId, InstanceState, Market, SpotRequest, SpotRequestId, SpotRequestState,
};
use spotkeeper_engine::boxes::{self, BoxError, Ctx, Silent, Timing};
use spotkeeper_engine::config::{self, BoxSpec};
use spotkeeper_engine::store::Store;

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn spec(extra: &str) -> BoxSpec {
    let text = format!(
        r#"
owner = "tester"
[box.dev]
image = "ami-0123456789abcdef0"
instance_types = ["t3.micro", "t3a.micro"]
max_price = 0.02
ready = {{ check = "none" }}
{extra}
"#
    );
    config::parse(Path::new("test.toml"), &text)
        .expect("valid config")
        .boxes["dev"]
        .clone()
}

struct World {
    cloud: FakeCloud,
    store: Store,
    locks: tempfile::TempDir,
}

impl World {
    async fn new() -> Self {
        let cloud = FakeCloud::new(&ZONES);
        for z in ZONES {
            cloud.set_price("t3.micro", z, 0.010);
            cloud.set_price("t3a.micro", z, 0.009);
        }
        Self {
            cloud,
            store: Store::memory().await.expect("store"),
            locks: tempfile::tempdir().expect("dir"),
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            cloud: &self.cloud,
            store: &self.store,
            owner: "tester",
            lock_dir: self.locks.path(),
            progress: &Silent,
            timing: Timing {
                poll: Duration::from_millis(1),
                running_timeout: Duration::from_secs(5),
                stop_timeout: Duration::from_secs(5),
            },
        }
    }

    fn live(&self) -> Vec<Instance> {
        self.cloud
            .all_instances()
            .into_iter()
            .filter(|i| i.state.is_live())
            .collect()
    }
}

fn foreign(id: &str, launched: SystemTime) -> Instance {
    Instance {
        id: InstanceId::new(id),
        state: InstanceState::Running,
        instance_type: "t3.micro".into(),
        zone: Some("us-east-1a".into()),
        market: Market::Spot,
        spot_request_id: None,
        public_ip: None,
        private_ip: None,
        launched_at: Some(launched),
        image_id: None,
        subnet_id: None,
        vpc_id: None,
        tags: [
            (tags::OWNER.to_owned(), "tester".to_owned()),
            (tags::BOX.to_owned(), "dev".to_owned()),
        ]
        .into(),
    }
}

#[tokio::test]
async fn up_launches_in_the_cheapest_allowed_type_and_zone() {
    let w = World::new().await;
    w.cloud.set_price("t3.micro", "us-east-1b", 0.003);
    w.cloud.set_price("t3a.micro", "us-east-1c", 0.001); // cheapest, but zone c is not allowed
    let out = boxes::up(&w.ctx(), &spec(r#"zones = ["us-east-1a", "us-east-1b"]"#))
        .await
        .expect("up");
    assert!(out.launched);
    assert_eq!(out.instance.instance_type, "t3.micro");
    assert_eq!(out.instance.zone.as_deref(), Some("us-east-1b"));
    assert_eq!(out.instance.state, InstanceState::Running);
    assert_eq!(out.instance.tag(tags::OWNER), Some("tester"));
    assert_eq!(out.instance.tag(tags::BOX), Some("dev"));
    assert_eq!(out.instance.tag(tags::NAME), Some("spotkeeper-dev"));
    let requests = w.cloud.all_spot_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].tag(tags::BOX),
        Some("dev"),
        "the spot request is tagged at creation too"
    );
}

#[tokio::test]
async fn without_zones_every_zone_of_the_region_is_considered() {
    let w = World::new().await;
    w.cloud.set_price("t3a.micro", "us-east-1c", 0.001);
    let out = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert_eq!(
        (
            out.instance.instance_type.as_str(),
            out.instance.zone.as_deref()
        ),
        ("t3a.micro", Some("us-east-1c"))
    );
}

#[tokio::test]
async fn a_ceiling_below_every_price_launches_nothing_and_lists_the_prices() {
    let w = World::new().await;
    let err = boxes::up(&w.ctx(), &spec("").with_price(0.005))
        .await
        .expect_err("too dear");
    let BoxError::NoOffering(no) = &err else {
        panic!("wrong error: {err}")
    };
    assert_eq!(no.prices.len(), 6);
    assert!(err.to_string().contains("0.009"), "{err}");
    assert_eq!(w.cloud.count("RunInstances"), 0);
    assert!(
        w.store
            .for_owner("tester")
            .open_intent("dev")
            .await
            .expect("store")
            .is_none(),
        "no intent left behind"
    );
}

#[tokio::test]
async fn a_second_up_finds_the_box_and_launches_nothing() {
    let w = World::new().await;
    let first = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    let second = boxes::up(&w.ctx(), &spec("")).await.expect("up again");
    assert!(!second.launched);
    assert_eq!(second.instance.id, first.instance.id);
    assert_eq!(w.cloud.count("RunInstances"), 1);
}

#[tokio::test]
async fn a_lost_launch_answer_is_retried_with_the_same_token_and_makes_no_second_instance() {
    let w = World::new().await;
    w.cloud.lose_next_launch_answer();
    // The instance exists but DescribeInstances does not show it yet.
    w.cloud.set_describe_lag(2);
    let err = boxes::up(&w.ctx(), &spec(""))
        .await
        .expect_err("answer lost");
    assert!(matches!(err, BoxError::Cloud(_)), "{err}");
    let intent = w
        .store
        .for_owner("tester")
        .open_intent("dev")
        .await
        .expect("store")
        .expect("intent kept open");
    w.cloud.set_describe_lag(0);
    let out = boxes::up(&w.ctx(), &spec("")).await.expect("second up");
    assert_eq!(w.cloud.count("RunInstances"), 2, "the launch was retried");
    assert_eq!(
        w.cloud.all_instances().len(),
        1,
        "with the same client token: no second instance"
    );
    assert_eq!(out.instance.tag(tags::INTENT), Some(intent.token.as_str()));
}

#[tokio::test]
async fn after_the_box_is_gone_the_next_launch_uses_a_new_token() {
    let w = World::new().await;
    let first = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    w.cloud
        .set_state(&first.instance.id, InstanceState::Terminated); // interrupted
    let second = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert!(second.launched);
    assert_ne!(second.instance.id, first.instance.id);
    assert_ne!(
        second.instance.tag(tags::INTENT),
        first.instance.tag(tags::INTENT)
    );
}

#[tokio::test]
async fn losing_a_launch_race_terminates_our_instance_and_keeps_the_older_one() {
    let w = World::new().await;
    let older = foreign(
        "i-0000000000000000a",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
    );
    w.cloud.launch_elsewhere_during_next_launch(older.clone());
    let out = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert!(!out.launched);
    assert_eq!(out.instance.id, older.id);
    let live = w.live();
    assert_eq!(live.len(), 1, "exactly one live instance: {live:?}");
    assert_eq!(live[0].id, older.id);
}

#[tokio::test]
async fn duplicates_found_by_up_are_reduced_to_the_oldest() {
    let w = World::new().await;
    w.cloud.insert_instance(foreign(
        "i-0000000000000000b",
        SystemTime::UNIX_EPOCH + Duration::from_secs(2_000),
    ));
    w.cloud.insert_instance(foreign(
        "i-0000000000000000a",
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000),
    ));
    let out = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert_eq!(out.instance.id.as_str(), "i-0000000000000000a");
    assert_eq!(w.live().len(), 1);
    assert_eq!(w.cloud.count("RunInstances"), 0);
}

#[tokio::test]
async fn insufficient_capacity_moves_on_to_the_next_offering() {
    let w = World::new().await;
    w.cloud.set_price("t3a.micro", "us-east-1a", 0.001);
    w.cloud
        .fail_next("RunInstances", "InsufficientInstanceCapacity");
    let out = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert_eq!(w.cloud.count("RunInstances"), 2);
    assert_ne!(
        (
            out.instance.instance_type.as_str(),
            out.instance.zone.as_deref()
        ),
        ("t3a.micro", Some("us-east-1a"))
    );
}

#[tokio::test]
async fn other_launch_errors_stop_at_once_and_close_the_intent() {
    let w = World::new().await;
    w.cloud.fail_next("RunInstances", "InvalidAMIID.NotFound");
    let err = boxes::up(&w.ctx(), &spec("")).await.expect_err("bad image");
    assert_eq!(
        err.to_string(),
        "RunInstances failed: InvalidAMIID.NotFound: injected by FakeCloud"
    );
    assert_eq!(w.cloud.count("RunInstances"), 1);
    assert!(
        w.store
            .for_owner("tester")
            .open_intent("dev")
            .await
            .expect("store")
            .is_none()
    );
}

#[tokio::test]
async fn up_waits_for_an_open_spot_request_instead_of_launching() {
    let w = World::new().await;
    w.cloud.insert_spot_request(SpotRequest {
        id: SpotRequestId::new("sir-open"),
        state: SpotRequestState::Open,
        instance_id: None,
        instance_type: Some("t3.micro".into()),
        status: Some((
            "capacity-not-available".into(),
            "There is no Spot capacity available that matches your request.".into(),
        )),
        tags: [
            (tags::OWNER.to_owned(), "tester".to_owned()),
            (tags::BOX.to_owned(), "dev".to_owned()),
        ]
        .into(),
    });
    let notes = Notes::default();
    let ctx = Ctx {
        progress: &notes,
        ..w.ctx()
    };
    let dev = spec("");
    // The request is fulfilled a moment later by "AWS".
    let fulfil = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let inst = foreign("i-00000000000000fff", SystemTime::now());
        w.cloud.insert_instance(Instance {
            tags: Default::default(),
            ..inst
        });
        w.cloud.insert_spot_request(SpotRequest {
            id: SpotRequestId::new("sir-open"),
            state: SpotRequestState::Active,
            instance_id: Some(InstanceId::new("i-00000000000000fff")),
            instance_type: Some("t3.micro".into()),
            status: Some(("fulfilled".into(), String::new())),
            tags: [
                (tags::OWNER.to_owned(), "tester".to_owned()),
                (tags::BOX.to_owned(), "dev".to_owned()),
            ]
            .into(),
        });
    };
    let (out, ()) = tokio::join!(boxes::up(&ctx, &dev), fulfil);
    let out = out.expect("up");
    assert_eq!(out.instance.id.as_str(), "i-00000000000000fff");
    assert!(!out.launched);
    assert_eq!(w.cloud.count("RunInstances"), 0);
    // Each status the request went through, once, as the original launcher said them.
    let said = notes.0.lock().expect("notes").clone();
    let statuses: Vec<&String> = said
        .iter()
        .filter(|l| l.starts_with("Spot request sir-open:"))
        .collect();
    assert_eq!(
        statuses,
        [
            "Spot request sir-open: open (capacity-not-available: There is no Spot capacity available that matches your request.)",
            "Spot request sir-open: active (fulfilled)"
        ],
        "{said:?}"
    );
}

/// A [`boxes::Progress`] that keeps the notes.
#[derive(Default)]
struct Notes(std::sync::Mutex<Vec<String>>);

impl spotkeeper_engine::boxes::Progress for Notes {
    fn note(&self, line: &str) {
        self.0.lock().expect("notes").push(line.to_owned());
    }
    fn start(&self, _: &str) {}
    fn finish(&self, _: &str) {}
}

#[tokio::test]
async fn stop_marks_cancels_and_terminates_then_up_never_reuses_what_stop_marked() {
    let w = World::new().await;
    let first = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    w.cloud.insert_spot_request(SpotRequest {
        id: SpotRequestId::new("sir-stale"),
        state: SpotRequestState::Open,
        instance_id: None,
        instance_type: Some("t3.micro".into()),
        status: None,
        tags: [
            (tags::OWNER.to_owned(), "tester".to_owned()),
            (tags::BOX.to_owned(), "dev".to_owned()),
        ]
        .into(),
    });
    let out = boxes::stop(&w.ctx(), &spec(""), true).await.expect("stop");
    assert_eq!(out.terminated, vec![first.instance.id.clone()]);
    assert!(out.cancelled.contains(&SpotRequestId::new("sir-stale")));
    let tagged = w.cloud.all_instances();
    assert!(
        tagged[0].tag(tags::STOPPED).is_some(),
        "marked before termination"
    );
    assert!(
        w.cloud
            .all_spot_requests()
            .iter()
            .all(|r| r.state != SpotRequestState::Open)
    );
    assert!(w.live().is_empty());
    let calls = w.cloud.calls();
    let tag_at = calls
        .iter()
        .position(|c| c == "CreateTags")
        .expect("tagged");
    let term_at = calls
        .iter()
        .position(|c| c == "TerminateInstances")
        .expect("terminated");
    assert!(tag_at < term_at, "mark first, then terminate: {calls:?}");

    let again = boxes::stop(&w.ctx(), &spec(""), true)
        .await
        .expect("stop again");
    assert_eq!(again, Default::default(), "nothing left to stop");
}

#[tokio::test]
async fn a_marked_instance_whose_termination_failed_is_not_taken_for_the_box() {
    let w = World::new().await;
    let first = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    w.cloud
        .fail_next("TerminateInstances", "RequestLimitExceeded");
    boxes::stop(&w.ctx(), &spec(""), true)
        .await
        .expect_err("terminate failed after marking");
    // The stop is not done: `up` does not bring the box back meanwhile.
    let refused = boxes::up(&w.ctx(), &spec("")).await;
    assert!(
        matches!(refused, Err(boxes::BoxError::Stopping { .. })),
        "{refused:?}"
    );
    // Even with the stop's record gone (set aside by hand, say), the
    // instance it marked is not taken for the box.
    w.store
        .for_owner("tester")
        .stop_done("dev")
        .await
        .expect("set aside");
    let second = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert!(second.launched, "the marked instance is not the live box");
    assert_ne!(second.instance.id, first.instance.id);
}

trait WithPrice {
    fn with_price(self, p: f64) -> Self;
}
impl WithPrice for BoxSpec {
    fn with_price(mut self, p: f64) -> Self {
        self.max_price = p;
        self
    }
}

#[tokio::test]
async fn a_replacement_launches_while_the_doomed_instance_runs_and_takes_its_volume_once_it_is_gone()
 {
    let w = World::new().await;
    let dev = spec(r#"data_volume = { name = "dev-data", size_gb = 10 }"#);
    let first = boxes::up(&w.ctx(), &dev).await.expect("up");
    let old = first.instance.clone();
    let vol = w.cloud.all_volumes().pop().expect("volume");
    assert_eq!(
        vol.attachments,
        vec![(old.id.clone(), "/dev/sdf".to_owned())]
    );

    let avoid = boxes::Avoid {
        instances: [old.id.clone()].into(),
        offerings: [spotkeeper_cloud::Offering::new(
            &old.instance_type,
            old.zone.as_deref().expect("zone"),
            spotkeeper_cloud::Market::Spot,
        )]
        .into(),
    };
    let ctx = w.ctx();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        boxes::up_avoiding(&ctx, &dev, &avoid),
    )
    .await
    .expect("no deadlock: the launch did not wait for the old instance");
    // The replacement was launched first; only then was the doomed holder let go.
    let calls = w.cloud.calls();
    let second_launch = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| *c == "RunInstances")
        .nth(1)
        .map(|(i, _)| i)
        .expect("two launches");
    let terminate = calls
        .iter()
        .position(|c| c == "TerminateInstances")
        .expect("the old one was terminated");
    assert!(
        second_launch < terminate,
        "launched while the old one ran: {calls:?}"
    );
    assert!(
        w.cloud
            .all_instances()
            .iter()
            .any(|i| i.id == old.id && !i.state.is_live())
    );
    let out = out.expect("replacement");
    assert!(out.launched);
    assert_ne!(out.instance.id, old.id);
    assert_eq!(out.instance.zone, old.zone, "the volume pins the zone");
    assert_ne!(
        out.instance.instance_type, old.instance_type,
        "the interrupted offering is avoided"
    );
    let vol = w.cloud.all_volumes().pop().expect("volume");
    assert_eq!(
        vol.attachments,
        vec![(out.instance.id.clone(), "/dev/sdf".to_owned())],
        "the same volume moved over"
    );
    assert_eq!(w.cloud.all_volumes().len(), 1);
    let managed = w
        .store
        .for_owner("tester")
        .managed_boxes()
        .await
        .expect("managed");
    assert_eq!(
        managed.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["dev"]
    );
}

#[tokio::test]
async fn stop_stops_managing_the_box() {
    let w = World::new().await;
    boxes::up(&w.ctx(), &spec("")).await.expect("up");
    assert_eq!(
        w.store
            .for_owner("tester")
            .managed_boxes()
            .await
            .expect("managed")
            .len(),
        1
    );
    boxes::stop(&w.ctx(), &spec(""), true).await.expect("stop");
    assert!(
        w.store
            .for_owner("tester")
            .managed_boxes()
            .await
            .expect("managed")
            .is_empty()
    );
}

#[tokio::test]
async fn an_elastic_ip_moves_from_the_boxs_own_instance_but_is_taken_from_no_one_else_unless_adopted()
 {
    let w = World::new().await;
    let dev = spec("elastic_ip = \"eipalloc-0123\"");
    // Someone else's running instance holds the address.
    let stranger = InstanceId::new("i-0000000000000abc1");
    w.cloud.insert_instance(Instance {
        id: stranger.clone(),
        state: InstanceState::Running,
        instance_type: "t3.micro".into(),
        zone: Some("us-east-1a".into()),
        market: Market::OnDemand,
        spot_request_id: None,
        public_ip: None,
        private_ip: None,
        launched_at: Some(SystemTime::now()),
        image_id: None,
        subnet_id: None,
        vpc_id: None,
        tags: Default::default(),
    });
    w.cloud.set_address("eipalloc-0123", &stranger);
    let err = boxes::up(&w.ctx(), &dev).await.expect_err("refused");
    assert!(err.to_string().contains("adopt_elastic_ip"), "{err}");
    assert_eq!(w.cloud.count("RunInstances"), 0, "refused before launching");
    assert_eq!(w.cloud.address_of("eipalloc-0123"), Some(stranger.clone()));

    // Adopted: taken.
    let adopted = spec("elastic_ip = \"eipalloc-0123\"\nadopt_elastic_ip = true");
    let first = boxes::up(&w.ctx(), &adopted).await.expect("up").instance;
    assert_eq!(w.cloud.address_of("eipalloc-0123"), Some(first.id.clone()));

    // The box's own replacement takes it from the box's old instance.
    let mut avoid = boxes::Avoid::default();
    avoid.instances.insert(first.id.clone());
    let second = boxes::up_avoiding(&w.ctx(), &dev, &avoid)
        .await
        .expect("replacement")
        .instance;
    assert_ne!(second.id, first.id);
    assert_eq!(w.cloud.address_of("eipalloc-0123"), Some(second.id));
}

#[tokio::test]
async fn a_volume_move_that_died_before_deleting_the_original_heals_keeping_the_attached_copy() {
    let w = World::new().await;
    let dev = spec(r#"data_volume = { name = "dev-data", size_gb = 10 }"#);
    let first = boxes::up(&w.ctx(), &dev).await.expect("up").instance;
    let copy = w.cloud.all_volumes().pop().expect("volume");
    // The pre-move original, left in another zone (untagged copy, original
    // not yet deleted when the move died).
    let other_zone = ZONES
        .iter()
        .find(|z| Some(**z) != first.zone.as_deref())
        .expect("another zone");
    let tags = [
        (tags::NAME.to_owned(), "dev-data".to_owned()),
        (tags::OWNER.to_owned(), "tester".to_owned()),
        (tags::BOX.to_owned(), "dev".to_owned()),
    ];
    let stale = w
        .cloud
        .create_volume(other_zone, Some(10), "gp3", None, &tags)
        .await
        .expect("volume");
    let again = boxes::up(&w.ctx(), &dev)
        .await
        .expect("healed, not ambiguous");
    assert_eq!(again.instance.id, first.id);
    let left: Vec<_> = w
        .cloud
        .all_volumes()
        .into_iter()
        .filter(|v| v.state != "deleted" && v.state != "deleting")
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].id, copy.id, "the attached copy is kept");
    assert_ne!(left[0].id, stale.id);
}

#[tokio::test]
async fn imdsv1_is_allowed_only_where_the_box_asks_for_it() {
    let w = World::new().await;
    boxes::up(&w.ctx(), &spec("")).await.expect("up");
    let launched = w.cloud.launch_specs();
    assert_eq!(launched.len(), 1);
    assert_eq!(
        launched[0].metadata_tokens,
        spotkeeper_cloud::MetadataTokens::Required,
        "IMDSv2 only by default"
    );
    let w = World::new().await;
    boxes::up(&w.ctx(), &spec("metadata = { http_tokens = \"optional\" }"))
        .await
        .expect("up");
    assert_eq!(
        w.cloud.launch_specs()[0].metadata_tokens,
        spotkeeper_cloud::MetadataTokens::Optional
    );
}

#[tokio::test]
async fn a_box_in_subnets_launches_into_the_subnet_of_the_zone_it_picks_and_can_change_zone() {
    let w = World::new().await;
    w.cloud.add_subnet("subnet-aaa", "us-east-1a");
    w.cloud.add_subnet("subnet-bbb", "us-east-1b");
    w.cloud.set_price("t3a.micro", "us-east-1b", 0.004);
    let box_spec = spec("subnets = [\"subnet-aaa\", \"subnet-bbb\"]");
    let first = boxes::up(&w.ctx(), &box_spec).await.expect("up");
    assert_eq!(
        first.instance.zone.as_deref(),
        Some("us-east-1b"),
        "the cheapest"
    );
    let launched = w.cloud.launch_specs();
    assert_eq!(launched[0].subnet_id.as_deref(), Some("subnet-bbb"));
    assert_eq!(launched[0].zone, None, "the subnet pins the zone");

    // Zone b has no capacity now: the next launch goes to a's subnet.
    w.cloud
        .set_state(&first.instance.id, InstanceState::Terminated);
    for t in ["t3.micro", "t3a.micro"] {
        w.cloud.refuse(
            t,
            "us-east-1b",
            Market::Spot,
            "InsufficientInstanceCapacity",
        );
    }
    let second = boxes::up(&w.ctx(), &box_spec).await.expect("up elsewhere");
    assert_eq!(second.instance.zone.as_deref(), Some("us-east-1a"));
    assert!(
        w.cloud
            .launch_specs()
            .iter()
            .any(|l| l.subnet_id.as_deref() == Some("subnet-aaa")),
        "launched into a's subnet"
    );
    // `zones` beside `subnets` keeps only the subnets in those zones.
    let w = World::new().await;
    w.cloud.add_subnet("subnet-aaa", "us-east-1a");
    w.cloud.add_subnet("subnet-bbb", "us-east-1b");
    w.cloud.set_price("t3a.micro", "us-east-1b", 0.004);
    let only_a = spec("subnets = [\"subnet-aaa\", \"subnet-bbb\"]\nzones = [\"us-east-1a\"]");
    let out = boxes::up(&w.ctx(), &only_a).await.expect("up");
    assert_eq!(out.instance.zone.as_deref(), Some("us-east-1a"));
}

#[tokio::test]
async fn volumes_in_a_zone_without_a_subnet_of_the_box_stop_up_before_launch() {
    let w = World::new().await;
    w.cloud.add_subnet("subnet-aaa", "us-east-1a");
    w.cloud
        .create_volume(
            "us-east-1c",
            Some(5),
            "gp3",
            None,
            &[
                (tags::NAME.into(), "dev-data".into()),
                (tags::OWNER.into(), "tester".into()),
                (tags::BOX.into(), "dev".into()),
            ],
        )
        .await
        .expect("volume");
    let box_spec =
        spec("subnets = [\"subnet-aaa\"]\ndata_volume = { name = \"dev-data\", size_gb = 5 }");
    let err = boxes::up(&w.ctx(), &box_spec).await.expect_err("refused");
    assert!(matches!(err, BoxError::NoSubnetThere { .. }), "{err}");
    assert!(err.to_string().contains("us-east-1c"), "{err}");
    assert_eq!(w.cloud.count("RunInstances"), 0);
}

#[tokio::test]
async fn an_up_right_after_an_up_takes_the_instance_aws_does_not_list_yet() {
    let w = World::new().await;
    let first = boxes::up(&w.ctx(), &spec("")).await.expect("up");
    // The instance is not listed by the next describes (by tag or by id).
    w.cloud.hide(&first.instance.id, 3);
    let second = boxes::up(&w.ctx(), &spec("")).await.expect("second up");
    assert_eq!(second.instance.id, first.instance.id, "the same instance");
    assert!(!second.launched);
    assert_eq!(w.cloud.count("RunInstances"), 1, "no second launch");
}

/// Seeds this owner's record: an instance of box `old` that ran two days in
/// t3a.micro/us-east-1a and was interrupted there four times.
async fn storm_in_t3a_zone_a(w: &World) {
    let two_days_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
    let mut ran = foreign("i-0000000000000storm", two_days_ago);
    ran.instance_type = "t3a.micro".into();
    ran.tags.insert(tags::BOX.to_owned(), "old".to_owned());
    w.store
        .for_owner("tester")
        .record_seen(&[ran])
        .await
        .expect("seen");
    for n in 0..4 {
        w.store
            .for_owner("tester")
            .first_delivery(
                &format!("storm-{n}"),
                "spot-interruption",
                Some("i-0000000000000storm"),
            )
            .await
            .expect("recorded");
    }
}

#[tokio::test]
async fn price_capacity_passes_over_an_offering_this_owner_saw_interrupted_over_and_over() {
    let w = World::new().await;
    for z in ZONES {
        w.cloud.set_price("t3a.micro", z, 0.010);
        w.cloud.set_price("t3.micro", z, 0.011);
    }
    w.cloud.set_price("t3a.micro", "us-east-1a", 0.005);
    storm_in_t3a_zone_a(&w).await;
    let zones = r#"zones = ["us-east-1a", "us-east-1b"]"#;

    // The default strategy: the cheapest of the offerings with good capacity.
    let out = boxes::up(&w.ctx(), &spec(zones)).await.expect("up");
    assert_eq!(
        (
            out.instance.instance_type.as_str(),
            out.instance.zone.as_deref()
        ),
        ("t3a.micro", Some("us-east-1b")),
        "not the storm's offering, though cheapest"
    );
    boxes::stop(&w.ctx(), &spec(zones), true)
        .await
        .expect("stop");

    // `cheapest` takes it anyway.
    let out = boxes::up(
        &w.ctx(),
        &spec(&format!("{zones}\nstrategy = \"cheapest\"")),
    )
    .await
    .expect("up");
    assert_eq!(
        (
            out.instance.instance_type.as_str(),
            out.instance.zone.as_deref()
        ),
        ("t3a.micro", Some("us-east-1a"))
    );
}

#[tokio::test]
async fn an_unknown_strategy_is_a_config_error_naming_the_choices() {
    let text = "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\nstrategy = \"cheapest-ish\"\n";
    let e = config::parse(Path::new("t.toml"), text).expect_err("refused");
    assert!(
        e.to_string().contains("t.toml:5:")
            && e.to_string()
                .contains("`cheapest`, `price-capacity`, `capacity`")
            || e.to_string().contains("expected one of"),
        "{e}"
    );
}
