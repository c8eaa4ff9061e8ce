//! Every config in `examples/` parses: what a newcomer copies must be valid.

#[test]
fn every_example_config_parses() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = spotkeeper_engine::config::load(&path)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
            assert!(
                !config.boxes.is_empty() || !config.pools.is_empty(),
                "{} defines no box and no pool",
                path.display()
            );
            seen += 1;
        }
    }
    assert!(seen >= 3, "the examples are there ({seen})");
}
