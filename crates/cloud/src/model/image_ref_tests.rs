use super::*;

#[test]
fn ubuntu_codenames_are_their_release() {
    assert_eq!(
        ImageRef::parse("ubuntu:noble:arm64").expect("codename"),
        ImageRef::Ubuntu {
            release: "24.04".into(),
            arch: Arch::Arm64
        }
    );
    assert_eq!(
        ImageRef::parse("ubuntu:jammy")
            .expect("codename")
            .to_string(),
        "ubuntu:22.04"
    );
    let e = ImageRef::parse("ubuntu:warty").expect_err("unknown");
    assert!(e.contains("nor a codename"), "{e}");
    assert_eq!(
        ImageRef::parse("ubuntu:noble:arm64:daily").expect("daily"),
        ImageRef::UbuntuDaily {
            release: "24.04".into(),
            arch: Arch::Arm64
        }
    );
    assert_eq!(
        ImageRef::parse("ubuntu:22.04:daily")
            .expect("daily")
            .to_string(),
        "ubuntu:22.04:daily"
    );
    assert!(ImageRef::parse("ubuntu:99.04:daily").is_err());
}
