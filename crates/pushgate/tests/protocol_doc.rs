//! docs/PROTOCOL.md names every error code and close code the gateway can send. The codes
//! are read from the source (the `error` replies built in the session and router crates,
//! the close codes passed to a close and the protocol errors' mapping), so a code added to
//! the code without a line in the document fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // In tests a failed unwrap is a failed test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The non-test part of every `.rs` file under `dir`.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = match text.find("#[cfg(test)]") {
                    Some(i) => text[..i].to_owned(),
                    None => text,
                };
                out.push((path, code));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// Every `"..."` that follows `marker` in `text`.
fn quoted_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .filter_map(|(i, _)| {
            let rest = text[i + marker.len()..].trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

/// Every identifier or number that follows `marker` in `text`.
fn word_after<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.match_indices(marker)
        .map(|(i, _)| {
            let rest = &text[i + marker.len()..];
            let n = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..n]
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// The text of the `## title` section of docs/PROTOCOL.md.
fn section(doc: &str, title: &str) -> String {
    let start = doc
        .find(&format!("\n## {title}\n"))
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no \"## {title}\" section"));
    let body = &doc[start + title.len() + 5..];
    body[..body.find("\n## ").unwrap_or(body.len())].to_owned()
}

fn protocol_doc() -> String {
    std::fs::read_to_string(root().join("docs/PROTOCOL.md")).expect("docs/PROTOCOL.md")
}

/// The `code` of every `error` reply the gateway can build.
fn error_codes() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for dir in [
        "crates/session/src",
        "crates/router/src",
        "crates/pushgate/src",
    ] {
        for (_, text) in sources(dir) {
            for marker in ["err(", "code: "] {
                codes.extend(
                    quoted_after(&text, marker)
                        .into_iter()
                        .filter(|c| {
                            !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                        })
                        .map(str::to_owned),
                );
            }
        }
    }
    codes
}

/// The close codes the gateway can send: named constants passed to a close, the protocol
/// errors' codes, literal `CloseCode(N)`s, and the operator range.
fn close_codes() -> BTreeSet<String> {
    let close_rs = std::fs::read_to_string(root().join("crates/protocol/src/close.rs")).unwrap();
    let value_of = |name: &str| -> u16 {
        let marker = format!("pub const {name}: CloseCode = CloseCode(");
        let i = close_rs
            .find(&marker)
            .unwrap_or_else(|| panic!("no constant CloseCode::{name}"));
        let rest = &close_rs[i + marker.len()..];
        rest[..rest.find(')').unwrap()].parse().unwrap()
    };
    let mut codes = BTreeSet::new();
    let mut files = sources("crates/session/src");
    files.extend(sources("crates/router/src"));
    files.extend(sources("crates/reactor/src"));
    files.extend(sources("crates/pushgate/src"));
    // In the protocol crate, what a violation closes with.
    files.extend(
        sources("crates/protocol/src")
            .into_iter()
            .filter(|(p, _)| p.ends_with("error.rs")),
    );
    for (path, text) in &files {
        for name in word_after(text, "CloseCode::") {
            if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                codes.insert(value_of(name).to_string());
            }
        }
        for n in word_after(text, "CloseCode(") {
            if n.chars().all(|c| c.is_ascii_digit()) {
                codes.insert(n.to_owned());
            }
        }
        if path.ends_with("bus/control.rs") {
            let range = word_after(text, "(4000..=")
                .into_iter()
                .map(|hi| format!("4000–{hi}"));
            codes.extend(range);
        }
    }
    codes
}

#[test]
fn every_error_code_the_code_sends_is_documented() {
    let codes = error_codes();
    // The scan must see the codes known today, or it is not reading what it should.
    for known in ["bad_json", "rate_limited", "forbidden", "unavailable"] {
        assert!(codes.contains(known), "scan missed {known}: {codes:?}");
    }
    let doc = section(&protocol_doc(), "Error codes");
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !doc.contains(&format!("| `{c}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes not in docs/PROTOCOL.md \"Error codes\": {missing:?}"
    );
}

#[test]
fn every_close_code_the_code_sends_is_documented() {
    let codes = close_codes();
    for known in ["1000", "1001", "1002", "1008", "1013", "4008", "4000–4999"] {
        assert!(codes.contains(known), "scan missed {known}: {codes:?}");
    }
    let doc = section(&protocol_doc(), "Close codes");
    let missing: Vec<_> = codes
        .iter()
        .filter(|c| !doc.contains(&format!("\n| {c} |")))
        .collect();
    assert!(
        missing.is_empty(),
        "close codes not in docs/PROTOCOL.md \"Close codes\": {missing:?}"
    );
}

#[test]
fn nothing_points_outside_the_repository() {
    let root = root();
    let mut offenders = Vec::new();
    let mut files = vec![root.join("README.md")];
    for dir in ["docs", "crates", "clients/js/src", "examples"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                if p.is_dir() && !matches!(&*name, "node_modules" | "target" | "dist") {
                    stack.push(p);
                } else if p.is_file() {
                    files.push(p);
                }
            }
        }
    }
    for f in files {
        if let Ok(text) = std::fs::read_to_string(&f) {
            if text.contains("shared/CONTRACT") || text.contains("../shared/") {
                offenders.push(f);
            }
        }
    }
    // This file names the pattern it looks for.
    offenders.retain(|f| !f.ends_with("protocol_doc.rs"));
    assert!(
        offenders.is_empty(),
        "point outside the repository: {offenders:?}"
    );
}
