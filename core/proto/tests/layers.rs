//! Layers run one way: every `crate::` path in the protocol crate's sources (in `use` lines and
//! in code) names a module at or below the module it is written in, in the order the crate
//! docs declare (`Layer order: a -> b -> ...` in `src/lib.rs`). A new top-level module must be
//! placed in that order before it can be used.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The declared order, bottom first, read from the crate docs.
fn declared_order() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let doc: String = lib.lines().filter_map(|l| l.strip_prefix("//!")).map(str::trim).collect::<Vec<_>>().join(" ");
    let start =
        doc.find("Layer order:").expect("the crate docs declare `Layer order: a -> b -> ...`") + "Layer order:".len();
    let rest = &doc[start..];
    let end = rest.find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c == '-' || c == '>' || c == ' '));
    rest[..end.unwrap_or(rest.len())].split("->").map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without its comments (line comments and doc comments).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            // A `//` inside a string literal is rare in this crate; cutting there only hides code.
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names through `crate::` (including each item of a
/// `crate::{a::X, b::Y}` group).
fn named_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Up to the matching brace; items at depth 0 each start with a module name.
            let (mut depth, mut item_start, mut items) = (0usize, 0usize, Vec::new());
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        items.push(&group[item_start..j]);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(&group[item_start..j]);
                        item_start = j + 1;
                    }
                    _ => {}
                }
            }
            out.extend(items.iter().map(|s| ident(s.trim())).filter(|s| !s.is_empty()));
        } else {
            out.push(ident(after));
        }
        rest = after;
    }
    out.into_iter().filter(|m| !m.is_empty()).collect()
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

/// Violations in the crate: (file, the module it is in, the module it names above it).
fn violations(order: &[String]) -> Vec<(String, String, String)> {
    let rank: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut files = Vec::new();
    sources(&src(), &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src()).expect("under src").to_string_lossy().replace('\\', "/");
        let top = rel.split('/').next().unwrap_or_default().trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let Some(&own) = rank.get(top.as_str()) else {
            bad.push((rel, top, "(a module missing from the declared order)".into()));
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("source");
        for m in named_modules(&code(&text)) {
            match rank.get(m.as_str()) {
                Some(&r) if r > own => bad.push((rel.clone(), top.clone(), m)),
                Some(_) => {}
                // `crate::SomeType` re-exported at the root: the root is above everything.
                None if m.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    bad.push((rel.clone(), top.clone(), format!("crate::{m} (through the crate root)")))
                }
                None => bad.push((rel.clone(), top.clone(), format!("{m} (not in the declared order)"))),
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

#[test]
fn every_import_runs_down_the_declared_layers() {
    let order = declared_order();
    assert!(order.len() >= 10, "declared order: {order:?}");
    let bad = violations(&order);
    assert!(
        bad.is_empty(),
        "imports against the order {}:\n{}",
        order.join(" -> "),
        bad.iter().map(|(f, from, to)| format!("  {f} ({from}) uses {to}")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import_and_a_group() {
    // The checker itself: a group, a nested group and a plain path are all read.
    let names = named_modules("use crate::{link::{LinkId, Link}, route::RouteId};\nlet x = crate::session::f();");
    assert_eq!(names, vec!["link", "route", "session"]);
    assert_eq!(named_modules(&code("// use crate::host::Host;\nuse crate::types::LinkId;")), vec!["types"]);
    // With the order reversed, the crate's real imports run against it.
    let mut reversed = declared_order();
    reversed.reverse();
    assert!(!violations(&reversed).is_empty());
}
