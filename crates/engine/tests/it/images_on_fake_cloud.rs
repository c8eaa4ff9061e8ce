//! The scheduled image refresh the daemon calls (`images.every`) and
//! retention (`images.keep`), on FakeCloud with explicit clocks.

use spotkeeper_cloud::prelude::*;
use std::path::Path;
use std::time::{Duration, SystemTime};

use spotkeeper_cloud::fake::FakeCloud;
use spotkeeper_cloud::model::tags;
use spotkeeper_cloud::{ImageId, LaunchSpec};
use spotkeeper_engine::config;
use spotkeeper_engine::images;

fn spec(images_line: &str) -> config::BoxSpec {
    let text = format!(
        "[box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.1\n{images_line}\n"
    );
    config::parse(Path::new("t.toml"), &text)
        .expect("valid")
        .boxes["dev"]
        .clone()
}

async fn running(cloud: &FakeCloud) -> spotkeeper_cloud::Instance {
    let mut s = LaunchSpec::new(ImageId::new("ami-1"), "t3.micro");
    s.tags.insert(tags::BOX.into(), "dev".into());
    cloud.launch(&s).await.expect("launch")
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn a_refresh_is_due_at_once_then_every_period() {
    let cloud = FakeCloud::new(&["a"]);
    let box_spec = spec("images = { every = \"24h\", keep = 2 }");
    let inst = running(&cloud).await;
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    let first = images::refresh_if_due(&cloud, "o", &box_spec, &inst, t0)
        .await
        .expect("refresh");
    assert!(first.is_some(), "no image yet: due now");
    assert_eq!(
        cloud.image_volumes(&first.as_ref().expect("made").0.id),
        Some(spotkeeper_cloud::ImageVolumes::RootOnly),
        "the box's own volumes stay out of its image"
    );
    assert!(
        images::refresh_if_due(&cloud, "o", &box_spec, &inst, t0 + DAY / 2)
            .await
            .expect("refresh")
            .is_none(),
        "not yet"
    );
    let second = images::refresh_if_due(&cloud, "o", &box_spec, &inst, t0 + DAY)
        .await
        .expect("refresh");
    assert!(second.is_some(), "due after a day");
    let third = images::refresh_if_due(&cloud, "o", &box_spec, &inst, t0 + DAY * 2)
        .await
        .expect("refresh")
        .expect("due");
    assert_eq!(third.1.len(), 1, "keep = 2 pruned the oldest");
    assert_eq!(third.1[0], first.expect("first").0.id);
    let left = images::box_images(&cloud, "o", "dev")
        .await
        .expect("images");
    assert_eq!(left.len(), 2);
    assert_eq!(
        images::latest(&cloud, "o", "dev")
            .await
            .expect("latest")
            .map(|i| i.id),
        Some(third.0.id)
    );
}

#[tokio::test]
async fn without_every_no_refresh_is_ever_due() {
    let cloud = FakeCloud::new(&["a"]);
    let inst = running(&cloud).await;
    let none = images::refresh_if_due(&cloud, "o", &spec(""), &inst, SystemTime::now())
        .await
        .expect("refresh");
    assert!(none.is_none());
    assert_eq!(cloud.count("CreateImage"), 0);
}
