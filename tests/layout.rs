//! The tree keeps the shape `src/lib.rs`'s `# Layout` doc claims: every module listed, each
//! using only modules listed below it (so no cycles), and no source file too long to read
//! in one sitting.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
/// Lines of non-test code a file may have.
const MAX_LINES: usize = 450;

/// Module names in the order of the layout table.
fn layout() -> Vec<String> {
    let lib = std::fs::read_to_string(Path::new(SRC).join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! | [`"))
        .filter_map(|l| l.split_once("`]").map(|(name, _)| name.to_owned()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// A file's code without its test module and comments.
fn code(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(str::trim).filter(|l| !l.starts_with("//")).map(str::to_owned).collect()
}

/// The top-level module a file belongs to (`src/dispatch/shard.rs` → `dispatch`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(SRC).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_owned()
}

/// The modules a line of code names through `crate::`.
fn uses(line: &str, modules: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in line.match_indices("crate::") {
        let rest = &line[at + "crate::".len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            // `use crate::{a, b::c}`: the first segment of each item.
            Some(list) => list
                .split('}')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(|item| item.trim().split("::").next().unwrap_or_default())
                .collect(),
            None => vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default()],
        };
        found.extend(names.into_iter().filter(|n| modules.iter().any(|m| m == n)).map(str::to_owned));
    }
    found
}

#[test]
fn every_module_uses_only_those_below_it() {
    let modules = layout();
    let declared: Vec<String> = std::fs::read_to_string(Path::new(SRC).join("lib.rs"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").map(|m| m.trim_end_matches(';').to_owned()))
        .collect();
    let mut sorted = modules.clone();
    sorted.sort();
    let mut declared_sorted = declared.clone();
    declared_sorted.sort();
    assert_eq!(sorted, declared_sorted, "the layout table lists exactly the declared modules");

    let rank: BTreeMap<&str, usize> = modules.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let from = module_of(file);
        let Some(&from_rank) = rank.get(from.as_str()) else { continue };
        for line in code(file) {
            for to in uses(&line, &modules) {
                if to != from && rank[to.as_str()] < from_rank {
                    upward.push(format!("{} uses {to}: {line}", file.strip_prefix(SRC).unwrap().display()));
                }
            }
        }
    }
    assert!(upward.is_empty(), "imports against the layout order:\n{}", upward.join("\n"));
}

#[test]
fn no_source_file_is_too_long_to_read_in_one_sitting() {
    let mut files = Vec::new();
    rust_files(Path::new(SRC), &mut files);
    let long: Vec<String> = files
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap()))
        .map(|(f, text)| (f, text.split("#[cfg(test)]").next().unwrap_or_default().lines().count()))
        .filter(|(_, n)| *n > MAX_LINES)
        .map(|(f, n)| format!("{}: {n} lines", f.strip_prefix(SRC).unwrap().display()))
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines of code:\n{}", long.join("\n"));
}

#[test]
fn the_import_scan_sees_both_forms() {
    let modules: Vec<String> = ["hub", "outbox", "protocol"].map(str::to_owned).to_vec();
    assert_eq!(uses("use crate::hub::Conn;", &modules), ["hub"]);
    assert_eq!(uses("use crate::{outbox::Outbox, protocol};", &modules), ["outbox", "protocol"]);
    assert_eq!(uses("let x = crate::protocol::ws::close_frame(1, \"\");", &modules), ["protocol"]);
    assert!(uses("use crate::other::Thing;", &modules).is_empty());
}
