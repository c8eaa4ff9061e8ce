//! No two modules of the engine import each other, directly or around a
//! ring: the layering the crate docs describe holds. Reads the sources (a
//! module's `crate::…` and `super::…` paths outside its tests) and looks for
//! cycles between files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The module path of a source file (`boxes/launch.rs` → `boxes::launch`).
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (parts != ["lib"]).then_some(parts)
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The paths a source names, comments and its test module left out.
fn named_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        for (prefix, base) in [
            ("crate::", Vec::new()),
            ("super::", module[..module.len() - 1].to_vec()),
        ] {
            let mut rest = line;
            while let Some(i) = rest.find(prefix) {
                let after = &rest[i + prefix.len()..];
                let words: Vec<String> = after
                    .split("::")
                    .map(|w| {
                        w.chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .take_while(|w| !w.is_empty())
                    .collect();
                let mut path = base.clone();
                path.extend(words);
                out.push(path);
                rest = after;
            }
        }
    }
    out
}

#[test]
fn no_two_engine_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter_map(|f| module_of(&src, f).map(|m| (m, f.clone())))
        .collect();
    // The file a path lands in: its longest prefix that is a module file.
    let resolve = |path: &[String]| -> Option<Vec<String>> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains_key(p))
    };
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).expect("read");
        for path in named_paths(&text, module) {
            let Some(target) = resolve(&path) else {
                continue;
            };
            // A parent and its own submodules are one unit.
            if target == *module || target.starts_with(module) || module.starts_with(&target) {
                continue;
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }
    // Depth-first search for a path that returns to where it started.
    fn reaches(
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        from: &Vec<String>,
        goal: &Vec<String>,
        seen: &mut BTreeSet<Vec<String>>,
        trail: &mut Vec<Vec<String>>,
    ) -> bool {
        for next in edges.get(from).into_iter().flatten() {
            if next == goal {
                trail.push(next.clone());
                return true;
            }
            if seen.insert(next.clone()) {
                trail.push(next.clone());
                if reaches(edges, next, goal, seen, trail) {
                    return true;
                }
                trail.pop();
            }
        }
        false
    }
    for module in edges.keys() {
        let mut trail = vec![module.clone()];
        if reaches(&edges, module, module, &mut BTreeSet::new(), &mut trail) {
            let ring: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
            panic!("import cycle: {}", ring.join(" → "));
        }
    }
    assert!(edges.len() > 20, "the sources were read: {edges:?}");
}
