//! The config's validation, error by error.

use spotkeeper_cloud::{ImageRef, Market, RootVolume};

use super::*;

const GOOD: &str = r#"
[aws]
region = "us-east-1"

[box.dev]
image = "ami-0123456789abcdef0"
instance_types = ["t3.micro", "t3a.micro"]
max_price = 0.02
zones = ["us-east-1a", "us-east-1b"]
tags = { team = "ml" }
ready = { check = "tcp", port = 22, timeout = "10m" }
"#;

fn err(text: &str) -> ConfigError {
    parse(Path::new("/cfg/spotkeeper.toml"), text).expect_err("config should be rejected")
}

#[test]
fn the_documented_example_parses() {
    let c = parse(Path::new("x.toml"), GOOD).expect("valid");
    let b = c.box_spec("dev").expect("box");
    assert_eq!(b.instance_types, ["t3.micro", "t3a.micro"]);
    assert_eq!(b.max_price, 0.02);
    assert_eq!(b.market, Market::Spot);
    assert_eq!(c.owner, DEFAULT_OWNER);
    assert_eq!(
        b.ready,
        ReadyCheck::Tcp {
            host: None,
            port: 22,
            timeout: Duration::from_secs(600)
        }
    );
}

#[test]
fn unknown_key_is_reported_with_line_and_column() {
    let e = err(&GOOD.replace("max_price = 0.02", "max_price = 0.02\nmax_prize = 1"));
    assert_eq!((e.line, e.column), (Some(9), Some(1)), "{e}");
    assert!(e.message.contains("max_prize"), "{e}");
}

#[test]
fn negative_price_points_at_the_value() {
    let e = err(&GOOD.replace("0.02", "-1.0"));
    assert_eq!((e.line, e.column), (Some(8), Some(13)), "{e}");
    assert!(
        e.to_string()
            .starts_with("/cfg/spotkeeper.toml:8:13: box \"dev\": max_price"),
        "{e}"
    );
}

#[test]
fn wrong_type_is_reported() {
    let e = err(&GOOD.replace("max_price = 0.02", "max_price = \"cheap\""));
    assert_eq!(e.line, Some(8), "{e}");
}

#[test]
fn empty_instance_types_is_rejected() {
    let e = err(&GOOD.replace(r#"["t3.micro", "t3a.micro"]"#, "[]"));
    assert_eq!(e.line, Some(7), "{e}");
    assert!(e.message.contains("instance_types is empty"), "{e}");
}

#[test]
fn missing_user_data_file_is_rejected_at_its_key() {
    let e = err(&GOOD.replace("tags =", "user_data_file = \"nope.sh\"\ntags ="));
    assert_eq!(e.line, Some(10), "{e}");
    assert!(e.message.contains("/cfg/nope.sh"), "{e}");
}

#[test]
fn user_data_file_is_read_relative_to_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("boot.sh"), "#!/bin/sh\necho hi\n").expect("write");
    let text = GOOD.replace("tags =", "user_data_file = \"boot.sh\"\ntags =");
    let c = parse(&dir.path().join("spotkeeper.toml"), &text).expect("valid");
    assert_eq!(
        c.boxes["dev"].launch.user_data.as_deref(),
        Some("#!/bin/sh\necho hi\n")
    );
}

#[test]
fn unknown_box_lists_the_known_ones() {
    let c = parse(Path::new("x.toml"), GOOD).expect("valid");
    let e = c.box_spec("prod").expect_err("no such box");
    assert!(e.message.contains("defines: dev"), "{e}");
}

#[test]
fn bad_ready_check_and_timeout_are_rejected() {
    assert!(err(&GOOD.replace("check = \"tcp\"", "check = \"ping\"")).line == Some(11));
    assert!(
        err(&GOOD.replace("\"10m\"", "\"soon\""))
            .message
            .contains("not a duration")
    );
}

#[test]
fn reserved_tags_and_bad_images_are_rejected() {
    assert!(
        err(&GOOD.replace("team = ", "\"spotkeeper:box\" = "))
            .message
            .contains("reserved")
    );
    assert!(
        err(&GOOD.replace("ami-0123456789abcdef0", "ubuntu"))
            .message
            .contains("neither an AMI id")
    );
}

#[test]
fn image_aliases_ssh_and_root_disk_parse() {
    let text = GOOD
        .replace("ami-0123456789abcdef0", "ubuntu:24.04:arm64")
        .replace("tags =", "ssh = { user = \"ubuntu\", key_file = \"keys/id\", port = 2222, host = \"203.0.113.7\", jump = \"bastion\" }\nroot_disk = { size_gb = 30 }\ntags =");
    let c = parse(Path::new("/etc/sk/x.toml"), &text).expect("valid");
    let b = &c.boxes["dev"];
    assert_eq!(
        b.launch.image,
        ImageRef::Ubuntu {
            release: "24.04".into(),
            arch: spotkeeper_cloud::Arch::Arm64
        }
    );
    assert_eq!(b.ssh.user, "ubuntu");
    assert_eq!(
        b.ssh.key_file.as_deref(),
        Some(Path::new("/etc/sk/keys/id"))
    );
    assert_eq!(
        (b.ssh.port, b.ssh.host.as_deref(), b.ssh.jump.as_deref()),
        (2222, Some("203.0.113.7"), Some("bastion"))
    );
    assert_eq!(
        b.launch.root_disk,
        Some(RootVolume {
            size_gb: 30,
            kind: "gp3".into()
        })
    );
    let e = err(&GOOD.replace("tags =", "ssh = { port = 22 }\ntags ="));
    assert!(e.message.contains("user"), "{e}");
    let e = err(&GOOD.replace("tags =", "ssh = { user = \"-oProxyCommand=x\" }\ntags ="));
    assert!(e.message.contains("not a valid name"), "{e}");
    assert!(
        err(&GOOD.replace("ami-0123456789abcdef0", "ubuntu:warty"))
            .message
            .contains("24.04")
    );
    // A codename is its release.
    let c = parse(
        Path::new("x.toml"),
        &GOOD.replace("ami-0123456789abcdef0", "ubuntu:noble"),
    )
    .expect("valid");
    assert_eq!(c.boxes["dev"].launch.image.to_string(), "ubuntu:24.04");
}

#[test]
fn persistence_keys_parse_and_validate() {
    let text = GOOD.replace(
        "tags =",
        "data_volume = { name = \"dev-data\", size_gb = 50, mount = \"/data\", on_stop = \"snapshot\" }\n\
         root_volume = { name = \"dev-root\" }\nmove_volume = true\n\
         dns = { zone = \"example.com\", name = \"dev.example.com\", ttl = 30, address = \"private\" }\n\
         elastic_ip = \"eipalloc-0abc\"\nimages = { keep = 3, every = \"24h\" }\ntags =",
    );
    let c = parse(Path::new("x.toml"), &text).expect("valid");
    let b = &c.boxes["dev"];
    let d = b.data_volume.as_ref().expect("data");
    assert_eq!(
        (
            d.name.as_str(),
            d.size_gb,
            d.kind.as_str(),
            d.mount.as_str(),
            d.on_stop
        ),
        ("dev-data", Some(50), "gp3", "/data", OnStop::Snapshot)
    );
    assert_eq!(d.keep, DEFAULT_STOP_SNAPSHOTS);
    assert_eq!(
        b.root_volume.as_ref().map(|r| (r.name.as_str(), r.on_stop)),
        Some(("dev-root", OnStop::Retain))
    );
    assert!(b.move_volume);
    let dns = b.dns.as_ref().expect("dns");
    assert_eq!(
        (dns.zone.as_str(), dns.name.as_str(), dns.ttl, dns.address),
        ("example.com.", "dev.example.com.", 30, DnsAddress::Private)
    );
    assert_eq!(
        b.images,
        ImagePolicy {
            keep: Some(3),
            every: Some(Duration::from_secs(86_400))
        }
    );
}

#[test]
fn persistence_mistakes_are_located() {
    let e = err(&GOOD.replace(
        "tags =",
        "data_volume = { name = \"v\", size_gb = 5 }\nroot_volume = { name = \"v\" }\ntags =",
    ));
    assert_eq!(e.line, Some(11), "{e}");
    assert!(e.message.contains("both named"), "{e}");
    assert!(
        err(&GOOD.replace(
            "tags =",
            "dns = { zone = \"example.com\", name = \"dev.other.org\" }\ntags ="
        ))
        .message
        .contains("not inside zone")
    );
    assert!(
        err(&GOOD.replace(
            "tags =",
            "data_volume = { name = \"v\", size_gb = 5, on_stop = \"shred\" }\ntags ="
        ))
        .message
        .contains("on_stop")
    );
    assert!(
        err(&GOOD.replace("tags =", "data_volume = { name = \"v\" }\ntags ="))
            .message
            .contains("size_gb is required")
    );
    for (keep, says) in [
        ("on_stop = \"snapshot\", keep = 0", "keep must be 1-100"),
        ("keep = 2", "keep applies to on_stop = \"snapshot\""),
    ] {
        let e = err(&GOOD.replace(
            "tags =",
            &format!("data_volume = {{ name = \"v\", size_gb = 5, {keep} }}\ntags ="),
        ));
        assert!(e.message.contains(says), "{e}");
    }
    assert!(
        err(&GOOD.replace(
            "tags =",
            "root_volume = { name = \"r\", mount = \"/x\" }\ntags ="
        ))
        .message
        .contains("mount does not apply")
    );
    assert!(
        err(&GOOD.replace("ami-0123456789abcdef0", "box:latest"))
            .message
            .contains("base_image")
    );
    assert!(
        err(&GOOD.replace("tags =", "images = { every = \"5m\" }\ntags ="))
            .message
            .contains("images.every must be at least 1h")
    );
    let latest = parse(
        Path::new("x.toml"),
        &GOOD.replace(
            "\"ami-0123456789abcdef0\"",
            "\"box:latest\"\nbase_image = \"al2023\"",
        ),
    )
    .expect("valid");
    assert!(latest.boxes["dev"].image_from_box);
    assert_eq!(
        latest.boxes["dev"].launch.image,
        ImageRef::AmazonLinux2023 {
            arch: spotkeeper_cloud::Arch::Amd64
        }
    );
}

#[test]
fn fallback_and_rebalance_policies_are_checked() {
    let c = parse(
        Path::new("x.toml"),
        &GOOD.replace(
            "tags =",
            "fallback = \"on-demand\"\non_rebalance = \"replace\"\ntags =",
        ),
    )
    .expect("valid");
    assert!(c.boxes["dev"].launch.fallback_on_demand && c.boxes["dev"].replace_on_rebalance);
    assert!(
        err(&GOOD.replace("tags =", "fallback = \"reserved\"\ntags ="))
            .message
            .contains("fallback")
    );
    assert!(
        err(&GOOD.replace("tags =", "on_rebalance = \"panic\"\ntags ="))
            .message
            .contains("on_rebalance")
    );
    assert_eq!(c.boxes["dev"].price_cap, PriceCap::Spotkeeper);
    let capped = parse(
        Path::new("x.toml"),
        &GOOD.replace("tags =", "price_cap = \"aws\"\ntags ="),
    )
    .expect("valid");
    assert_eq!(capped.boxes["dev"].price_cap, PriceCap::Aws);
    let e = err(&GOOD.replace("tags =", "price_cap = \"bid\"\ntags ="));
    // Keywords are read by serde: the error names the choices and the place.
    assert_eq!(
        e.to_string(),
        "/cfg/spotkeeper.toml:10:13: price_cap: unknown variant `bid`, expected `spotkeeper` or `aws`"
    );
}

#[test]
fn config_location_prefers_flag_then_env_then_default() {
    assert_eq!(
        locate(Some(Path::new("a.toml")), Some("b.toml")),
        PathBuf::from("a.toml")
    );
    assert_eq!(locate(None, Some("b.toml")), PathBuf::from("b.toml"));
    assert_eq!(locate(None, None), PathBuf::from(DEFAULT_FILE));
}

#[test]
fn a_shared_database_and_its_lease_are_read_and_checked() {
    let ok = parse(
        Path::new("/cfg/spotkeeper.toml"),
        "[daemon]\ninterval = \"10s\"\ndatabase = \"postgres://sk:pw-s3cr3t@db.internal/sk\"\n",
    )
    .expect("valid");
    let db = ok.database.as_ref().expect("database");
    assert_eq!(db.expose(), "postgres://sk:pw-s3cr3t@db.internal/sk");
    assert!(!format!("{ok:?}").contains("pw-s3cr3t"));
    assert_eq!(
        ok.lease,
        Duration::from_secs(30),
        "three intervals by default"
    );
    let alone = parse(Path::new("/cfg/spotkeeper.toml"), GOOD).expect("valid");
    assert_eq!((alone.database, alone.lease), (None, DEFAULT_INTERVAL * 3));
    for (text, line, says) in [
        (
            "[daemon]\ndatabase = \"mysql://db/x\"\n",
            2,
            "daemon.database: mysql:// is not supported",
        ),
        (
            "[daemon]\ninterval = \"10s\"\nlease = \"15s\"\n",
            3,
            "daemon.lease must be at least 20s",
        ),
        ("[daemon]\nlease = \"soon\"\n", 2, "daemon.lease"),
    ] {
        let e = err(text);
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}

#[test]
fn the_event_queue_is_the_owners_own_unless_the_config_names_one() {
    let c = parse(Path::new("x.toml"), &format!("owner = \"team.a\"\n{GOOD}")).expect("valid");
    assert_eq!(c.queue, "spotkeeper-team_a-events");
    assert!(!c.queue_named);
    let c = parse(Path::new("x.toml"), GOOD).expect("valid");
    assert_eq!(
        c.queue, "spotkeeper-spotkeeper-events",
        "the default owner's"
    );
    let c = parse(
        Path::new("x.toml"),
        &format!("[daemon]\nqueue = \"{LEGACY_QUEUE}\"\n{GOOD}"),
    )
    .expect("valid");
    assert_eq!(c.queue, "spotkeeper-events");
    assert!(c.queue_named);
    let e = err(&format!("[daemon]\nqueue = \"a.b\"\n{GOOD}"));
    assert!(e.message.contains("is not an SQS queue name"), "{e}");
}

#[test]
fn one_volume_named_in_two_boxes_is_refused_where_the_second_names_it() {
    let text = format!(
        "{GOOD}data_volume = {{ name = \"shared\", size_gb = 5 }}\n\n\
         [box.other]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n\
         root_volume = {{ name = \"shared\" }}\n"
    );
    let e = err(&text);
    assert_eq!(e.line, Some(18), "{e}");
    assert!(
        e.message
            .contains("box \"other\": root_volume \"shared\" is box \"dev\"'s data_volume already"),
        "{e}"
    );
    // Different names, or one box: fine (one box naming one volume twice is
    // refused by the box's own check).
    let ok = text.replace(
        "root_volume = { name = \"shared\" }",
        "root_volume = { name = \"own\" }",
    );
    assert!(parse(Path::new("x.toml"), &ok).is_ok());
}

#[test]
fn imdsv1_is_asked_for_with_metadata_http_tokens_and_a_typo_names_the_choices() {
    let c = parse(
        Path::new("x.toml"),
        &format!("{GOOD}metadata = {{ http_tokens = \"optional\" }}\n"),
    )
    .expect("valid");
    assert_eq!(
        c.boxes["dev"].launch.metadata_tokens,
        spotkeeper_cloud::MetadataTokens::Optional
    );
    let c = parse(Path::new("x.toml"), GOOD).expect("valid");
    assert_eq!(
        c.boxes["dev"].launch.metadata_tokens,
        spotkeeper_cloud::MetadataTokens::Required
    );
    let e = err(&format!("{GOOD}metadata = {{ http_tokens = \"v1\" }}\n"));
    assert_eq!((e.line, e.column), (Some(12), Some(28)), "{e}");
    assert!(
        e.message
            .contains("unknown variant `v1`, expected `required` or `optional`"),
        "{e}"
    );
}

#[test]
fn a_box_takes_subnet_or_subnets_not_both_and_not_none() {
    let c = parse(
        Path::new("x.toml"),
        &format!("{GOOD}subnets = [\"subnet-a\", \"subnet-b\"]\n"),
    )
    .expect("valid");
    assert_eq!(c.boxes["dev"].subnets, ["subnet-a", "subnet-b"]);
    let c = parse(
        Path::new("x.toml"),
        &format!("{GOOD}subnet = \"subnet-a\"\n"),
    )
    .expect("valid");
    assert_eq!(c.boxes["dev"].subnets, ["subnet-a"]);
    let e = err(&format!(
        "{GOOD}subnet = \"subnet-a\"\nsubnets = [\"subnet-b\"]\n"
    ));
    assert!(e.message.contains("set subnet or subnets, not both"), "{e}");
    let e = err(&format!("{GOOD}subnets = []\n"));
    assert!(e.message.contains("subnets is empty"), "{e}");
}

#[test]
fn daemon_durations_have_an_upper_bound_and_a_huge_one_is_an_error_not_a_panic() {
    for (key, value, says) in [
        ("interval", "2h", "daemon.interval must be at most 1h"),
        ("interval", "100000000000s", "longer than a hundred years"),
        ("lease", "5h", "daemon.lease must be at most 2h"),
        (
            "retention",
            "20000d",
            "daemon.retention must be at most 10years",
        ),
    ] {
        let e = err(&format!("[daemon]\n{key} = \"{value}\"\n{GOOD}"));
        assert!(e.message.contains(says), "{key} = {value}: {e}");
        assert_eq!(e.line, Some(2), "{e}");
    }
    let e = err(&format!(
        "{GOOD}images = {{ every = \"9999999999999s\" }}\n"
    ));
    assert!(e.message.contains("is longer than a hundred years"), "{e}");
    let c = parse(
        Path::new("x.toml"),
        &format!("[daemon]\ninterval = \"1h\"\nlease = \"2h\"\nretention = \"10y\"\n{GOOD}"),
    )
    .expect("the bounds themselves are fine");
    assert_eq!(c.interval, MAX_INTERVAL);
}

#[test]
fn the_fingerprint_follows_the_boxes_and_pools_not_the_machine_or_the_layout() {
    let base = "owner = \"o\"\n[api]\nlisten = \"127.0.0.1:7000\"\n\
                [box.dev]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [\"t3.micro\"]\nmax_price = 0.02\n";
    let fp = |text: &str| parse(Path::new("t.toml"), text).expect("valid").fingerprint;
    let same = fp(base);
    assert_eq!(same.len(), 64);
    // Another machine (its own listen address), comments, key order.
    let other_machine = base.replace("7000", "7001");
    assert_eq!(fp(&other_machine), same);
    let reordered = "# a comment\nowner = \"o\"\n[box.dev]\nmax_price = 0.02\n\
                     instance_types = [\"t3.micro\"]\nimage = \"ami-0123456789abcdef0\"\n";
    assert_eq!(fp(reordered), same);
    // What is wanted changed: another fingerprint.
    assert_ne!(fp(&base.replace("0.02", "0.03")), same);
    let with_pool = format!(
        "{base}[pool.w]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\", capacity = 1 }} ]\n\
         max_capacity = 2\ndemand = {{ http = \"http://127.0.0.1:1/jobs\" }}\n"
    );
    assert_ne!(fp(&with_pool), same);
}

#[test]
fn on_interruption_is_one_command_with_a_timeout_inside_the_two_minutes() {
    let with = |hook: &str| GOOD.replace("tags =", &format!("on_interruption = {hook}\ntags ="));
    let c = parse(
        Path::new("x.toml"),
        &with(r#"{ command = "systemctl stop app && sync" }"#),
    )
    .expect("valid");
    let b = c.box_spec("dev").expect("box");
    let h = b.on_interruption.as_ref().expect("hook");
    assert_eq!(h.command, "systemctl stop app && sync");
    assert_eq!(h.timeout, DEFAULT_HOOK_TIMEOUT);
    assert!(!b.agent);
    let c = parse(
        Path::new("x.toml"),
        &with(r#"{ command = "sync", timeout = "20s" }"#).replace("tags =", "agent = true\ntags ="),
    )
    .expect("valid");
    let b = c.box_spec("dev").expect("box");
    assert_eq!(
        b.on_interruption.as_ref().expect("hook").timeout,
        Duration::from_secs(20)
    );
    assert!(b.agent);

    for (hook, says) in [
        (r#"{ command = " " }"#, "on_interruption.command is empty"),
        (r#"{ command = "a\nb" }"#, "must be one line"),
        (
            r#"{ command = "sync", timeout = "3m" }"#,
            "on_interruption.timeout must be at most 1m 40s",
        ),
        (
            r#"{ command = "sync", timeout = "soon" }"#,
            "on_interruption.timeout",
        ),
        (
            r#"{ command = "sync", tiemout = "1s" }"#,
            "unknown field `tiemout`",
        ),
    ] {
        let e = err(&with(hook));
        assert!(
            e.to_string().starts_with("/cfg/spotkeeper.toml:10:") && e.to_string().contains(says),
            "{hook}: {e}"
        );
    }
}

#[test]
fn a_pools_hook_goes_to_its_instances_agent_in_the_user_data() {
    let text = format!(
        "{GOOD}[pool.w]\nimage = \"ami-0123456789abcdef0\"\ninstance_types = [ {{ type = \"t3.micro\", capacity = 1 }} ]\n\
         max_capacity = 2\nuser_data = \"#cloud-config\\npackages: [htop]\\n\"\n\
         on_interruption = {{ command = \"drain-worker\", timeout = \"60s\" }}\n"
    );
    let c = parse(Path::new("x.toml"), &text).expect("valid");
    let p = &c.pools["w"];
    let data = p.user_data().expect("user data");
    assert!(data.contains("spotkeeper-agent.service"), "{data}");
    assert!(data.contains("SK_AGENT_TIMEOUT:=60"), "{data}");
    // The user's own part follows, and the hook travels encoded.
    assert!(data.contains("packages: [htop]"), "{data}");
    assert!(!data.contains("drain-worker"), "{data}");
    // Without a hook the user's data is unchanged.
    let plain = parse(
        Path::new("x.toml"),
        &text.replace("on_interruption", "# on_interruption"),
    )
    .expect("valid");
    assert_eq!(
        plain.pools["w"].user_data().as_deref(),
        Some("#cloud-config\npackages: [htop]\n")
    );
}

#[test]
fn failover_times_default_need_a_second_region_and_are_bounded() {
    let two = "regions = [\"us-east-1\", \"us-west-2\"]\n";
    let c = parse(Path::new("x.toml"), &format!("{GOOD}{two}")).expect("valid");
    let b = &c.boxes["dev"];
    assert_eq!(b.failover_after, box_spec::DEFAULT_FAILOVER_AFTER);
    assert_eq!(b.return_after, box_spec::DEFAULT_RETURN_AFTER);
    assert_eq!(crate::failover::blocked(b), None);
    let c = parse(
        Path::new("x.toml"),
        &format!("{GOOD}{two}failover_after = \"0s\"\nreturn_after = \"2h\"\n"),
    )
    .expect("valid");
    assert_eq!(c.boxes["dev"].failover_after, std::time::Duration::ZERO);
    assert_eq!(
        c.boxes["dev"].return_after,
        std::time::Duration::from_secs(7200)
    );
    let e = err(&format!("{GOOD}failover_after = \"5m\"\n"));
    assert!(e.message.contains("list them in regions"), "{e}");
    assert_eq!(e.line, Some(12), "{e}");
    let e = err(&format!("{GOOD}{two}return_after = \"30d\"\n"));
    assert!(e.message.contains("return_after must be at most"), "{e}");
    let e = err(&format!("{GOOD}{two}failover_after = \"soon\"\n"));
    assert!(e.message.contains("failover_after"), "{e}");
    // What keeps a box at home is said, not silently ignored.
    let c = parse(
        Path::new("x.toml"),
        &format!("{GOOD}{two}data_volume = {{ name = \"d\", size_gb = 5 }}\n"),
    )
    .expect("valid");
    let why = crate::failover::blocked(&c.boxes["dev"]).expect("stays home");
    assert!(why.contains("not replicated"), "{why}");
    let c = parse(
        Path::new("x.toml"),
        &format!("{GOOD}{two}subnet = \"subnet-a\"\n"),
    )
    .expect("valid");
    let why = crate::failover::blocked(&c.boxes["dev"]).expect("stays home");
    assert!(why.contains("subnets"), "{why}");
    let c = parse(Path::new("x.toml"), GOOD).expect("valid");
    assert!(crate::failover::blocked(&c.boxes["dev"]).is_some());
}
