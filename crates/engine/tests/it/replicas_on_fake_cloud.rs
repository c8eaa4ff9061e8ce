//! Replicas across regions on FakeCloud, where a copy can be held `pending`
//! as AWS holds a cross-region copy for minutes to hours: a region still
//! copying is skipped, and the home snapshot a pending copy reads from is
//! never pruned (AWS fails a copy whose source is deleted before it ends).

use std::path::Path;

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::prelude::*;
use spotkeeper_engine::config;
use spotkeeper_engine::persist::volume_tags;
use spotkeeper_engine::replicate::{self, Replica};

fn spec() -> config::BoxSpec {
    let text = "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\n\
        max_price = 0.1\nregions = [\"us-east-1\", \"us-west-2\", \"eu-west-1\"]\n\
        data_volume = { name = \"dev-data\", size_gb = 10, replicate = \"1h\", keep = 1 }\n";
    config::parse(Path::new("t.toml"), text)
        .expect("valid")
        .boxes["dev"]
        .clone()
}

async fn held(cloud: &FakeCloud) -> Vec<Replica> {
    replicate::replicas(cloud, "team", "dev-data")
        .await
        .expect("replicas")
}

fn ids(all: &[Replica]) -> Vec<String> {
    all.iter().map(|r| r.snapshot.to_string()).collect()
}

#[tokio::test]
async fn a_region_still_copying_is_skipped_and_the_source_of_its_copy_is_kept() {
    let spec = spec();
    let home = FakeCloud::new(&["us-east-1a"]);
    let (west, eu) = (
        FakeCloud::new(&["us-west-2a"]),
        FakeCloud::new(&["eu-west-1a"]),
    );
    home.create_volume(
        "us-east-1a",
        Some(10),
        "gp3",
        None,
        &volume_tags("team", "dev", "dev-data"),
    )
    .await
    .expect("the box's volume");
    let round = |now: i64| {
        let (home, west, eu, spec) = (&home, &west, &eu, &spec);
        async move {
            let others: Vec<(String, &dyn Cloud)> = vec![
                ("us-west-2".to_owned(), west as &dyn Cloud),
                ("eu-west-1".to_owned(), eu as &dyn Cloud),
            ];
            replicate::replicate(home, &others, "team", spec, now)
                .await
                .expect("a round")
        }
    };

    round(1_000).await;
    assert_eq!(
        (
            held(&home).await.len(),
            held(&west).await.len(),
            held(&eu).await.len()
        ),
        (1, 1, 1)
    );

    // us-west-2's next copy takes long.
    west.set_copies_pending(true);
    let second = round(2_000).await;
    let s2 = second.source.clone().expect("taken");
    assert!(second.skipped.is_empty());
    let w = held(&west).await;
    assert_eq!(
        w.len(),
        2,
        "the pending copy and the last completed one: {w:?}"
    );
    assert!(!w[0].completed && w[1].completed);

    // The next round skips us-west-2; eu-west-1 gets its copy, and the
    // home snapshot us-west-2 is still copying from stays (keep = 1).
    let third = round(3_000).await;
    assert_eq!(third.skipped, vec!["us-west-2".to_owned()]);
    assert!(third.copies.contains_key("eu-west-1") && !third.copies.contains_key("us-west-2"));
    assert!(
        third
            .describe("dev-data")
            .contains("a copy to us-west-2 is still under way")
    );
    let h = held(&home).await;
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(
        ids(&h).contains(&s2.to_string()),
        "the pending copy's source: {h:?}"
    );
    assert_eq!(held(&eu).await.len(), 1);
    assert_eq!(held(&west).await.len(), 2);

    // Once the copy completes, the next round copies again and prunes all.
    west.set_copies_pending(false);
    let fourth = round(4_000).await;
    assert!(fourth.skipped.is_empty() && fourth.copies.len() == 2);
    assert_eq!(
        (
            held(&home).await.len(),
            held(&west).await.len(),
            held(&eu).await.len()
        ),
        (1, 1, 1)
    );
    assert_eq!(
        replicate::recovery_point(&held(&west).await, "us-east-1", 4_060),
        Some(60),
        "the fake names every region us-east-1"
    );
}
