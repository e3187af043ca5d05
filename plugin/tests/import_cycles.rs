//! No import circles between the plugin's modules.
//!
//! Reads every `plugin/src/**.rs`, collects the module paths each file names (`crate::a::b`,
//! `super::…`, `self::…`, outside comments) and builds a graph whose nodes are *units*: a
//! top-level module (`worker`, `control`, `sandbox`, …), or, for a module directory, each of its
//! direct children (`vsock::device`, `vsock::connection`, `iotlb::policy`, …). A unit's own
//! sub-files (`vsock/device/tx.rs`) belong to it. The crate root (`lib.rs`) composes everything
//! and is not a node; neither is an edge between a directory module and its own children (its
//! `mod.rs` re-exports them, they use its shared items). A cycle fails the test with its path spelled out, e.g.
//! `control -> vsock::device -> worker -> control`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a source file: `vsock/device/tx.rs` → [vsock, device, tx],
/// `vsock/mod.rs` → [vsock], `lib.rs` → [].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments (line, block and doc comments) and string literals, so that
/// paths mentioned in prose do not count.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// The code before a trailing `#[cfg(test)] mod …`: a unit test may reach into its parent's
/// neighbours (a test of `session_error` drives a `session`), which is not a dependency of the
/// module itself.
fn without_test_module(code: &str) -> String {
    let mut search = 0;
    while let Some(at) = code[search..].find("#[cfg(test)]") {
        let start = search + at;
        let rest = code[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod ") {
            return code[..start].to_string();
        }
        search = start + 1;
    }
    code.to_string()
}

/// Paths (as segment lists, absolute from the crate root) that `code` names, seen from module
/// `here` (of a file that is a `mod.rs` when `is_dir_module`, under source root `src`).
fn named_paths(src: &Path, code: &str, here: &[String], is_dir_module: bool) -> Vec<Vec<String>> {
    let is_child = |here: &[String], name: &str| {
        let dir = here.iter().fold(src.to_path_buf(), |d, s| d.join(s));
        dir.join(format!("{name}.rs")).exists() || dir.join(name).join("mod.rs").exists()
    };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let at_word_start = i == 0 || !(ident(chars[i - 1]) || chars[i - 1] == ':');
        if !at_word_start || !ident(chars[i]) {
            i += 1;
            continue;
        }
        // Read `seg::seg::…`, and a `{a, b::c}` group right after the last `::`.
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && ident(chars[j]) {
                j += 1;
            }
            segs.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                j += 2;
                if chars.get(j).is_some_and(|&c| ident(c)) {
                    continue;
                }
            }
            break;
        }
        // Where the path starts, and how many of its segments that start consumed.
        let (mut base, consumed): (Vec<String>, usize) = match segs[0].as_str() {
            "crate" => (Vec::new(), 1),
            // `self` is this module; each `super` goes one up. (Inside an inline `mod tests`,
            // `super` is the file's module: counted one level too high, which only ever adds an
            // edge to the enclosing directory module, and those edges do not count.)
            "self" => (here.to_vec(), 1),
            "super" => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                (here[..here.len().saturating_sub(ups)].to_vec(), ups)
            }
            // A relative path through a child module (`use table::VhostIommu` in a `mod.rs`).
            child if segs.len() > 1 && is_dir_module && is_child(here, child) => (here.to_vec(), 0),
            _ => {
                i = j;
                continue;
            }
        };
        base.extend(segs[consumed..].iter().cloned());
        if chars.get(j) == Some(&'{') {
            // `crate::a::{b, c::d}`: every member, one level deep is enough for units.
            let end = chars[j..]
                .iter()
                .position(|&c| c == '}')
                .map_or(chars.len(), |p| j + p);
            let group: String = chars[j + 1..end].iter().collect();
            for member in group.split(',') {
                let mut p = base.clone();
                p.extend(
                    member
                        .trim()
                        .split("::")
                        .filter(|s| !s.is_empty() && s.chars().all(ident))
                        .map(str::to_string),
                );
                found.push(p);
            }
        }
        found.push(base);
        i = j;
    }
    found
}

/// The unit a module path belongs to, if it names a module of the crate.
fn unit_of(path: &[String], src: &Path) -> Option<String> {
    let top = path.first()?;
    let top_dir = src.join(top);
    if top_dir.is_dir() {
        let child = path.get(1)?;
        let as_file = top_dir.join(format!("{child}.rs"));
        let as_dir = top_dir.join(child).join("mod.rs");
        if as_file.exists() || as_dir.exists() {
            return Some(format!("{top}::{child}"));
        }
        // An item of the directory module itself (`crate::iotlb::DeviceMemory`).
        return Some(top.clone());
    }
    src.join(format!("{top}.rs")).exists().then(|| top.clone())
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let here = module_of(src, &file);
        if here.is_empty() {
            continue; // lib.rs / main.rs: the composition root
        }
        let from = unit_of(&here, src).unwrap_or_else(|| here[0].clone());
        let name = file.file_name().unwrap().to_string_lossy();
        let is_dir_module = name == "mod.rs";
        let code = without_test_module(&code_only(&std::fs::read_to_string(&file).unwrap()));
        for path in named_paths(src, &code, &here, is_dir_module) {
            if let Some(to) = unit_of(&path, src) {
                // A directory module and its own children (re-exports one way, shared items the
                // other) are one module seen from outside: no edge between them.
                let family =
                    to.starts_with(&format!("{from}::")) || from.starts_with(&format!("{to}::"));
                if to != from && !family {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
        edges.entry(from).or_default();
    }
    edges
}

/// Every elementary cycle found by a depth-first search (one per back edge).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(pos) = stack.iter().position(|s| s == n) {
            let mut c = stack[pos..].to_vec();
            c.push(n.to_string());
            found.push(c);
            return;
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, stack, done, found);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn plugin_modules_import_no_circle() {
    let edges = graph(&src_dir());
    let found = cycles(&edges);
    let spelled: Vec<String> = found.iter().map(|c| c.join(" -> ")).collect();
    assert!(
        spelled.is_empty(),
        "import circle(s) between plugin modules:\n  {}\n(graph: {edges:#?})",
        spelled.join("\n  ")
    );
}

/// The same at the coarsest grain, top-level modules (`config`, `iotlb`, `vhost_user`, `vsock`,
/// ...): edges into a leaf unit (one that imports nothing of the crate, such as `vsock::status`)
/// are left out, since nothing reached through a leaf can lead back.
#[test]
fn top_level_modules_import_no_circle() {
    let edges = graph(&src_dir());
    let top = |unit: &str| unit.split("::").next().unwrap_or(unit).to_string();
    let mut coarse: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, tos) in &edges {
        let entry = coarse.entry(top(from)).or_default();
        for to in tos {
            let leaf = edges.get(to).is_none_or(|t| t.is_empty());
            if !leaf && top(to) != top(from) {
                entry.insert(top(to));
            }
        }
    }
    let spelled: Vec<String> = cycles(&coarse).iter().map(|c| c.join(" -> ")).collect();
    assert!(
        spelled.is_empty(),
        "import circle(s) between top-level plugin modules:\n  {}\n(graph: {coarse:#?})",
        spelled.join("\n  ")
    );
}

/// The shared data types are leaves: the control plane and the worker can use them without
/// reaching the device through them.
#[test]
fn the_control_plane_does_not_depend_on_the_device() {
    let edges = graph(&src_dir());
    let control = &edges["control"];
    assert!(
        !control.contains("vsock::device"),
        "control imports the device: {control:?}"
    );
    assert!(
        !edges["vsock::device"].contains("worker"),
        "the device imports the worker: {:?}",
        edges["vsock::device"]
    );
}

/// The parser itself: a circle is found and spelled out; prose does not count.
#[test]
fn the_checker_finds_a_circle_and_ignores_comments() {
    let dir = std::env::temp_dir().join(format!("import-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("a/mod.rs"), "mod x;\n").unwrap();
    std::fs::write(dir.join("a/x.rs"), "use crate::b::Thing;\nuse super::y;\n").unwrap();
    std::fs::write(dir.join("a/y.rs"), "// crate::b::Thing in prose\n").unwrap();
    std::fs::write(dir.join("a/z.rs"), "use super::{x::f, y};\n").unwrap();
    std::fs::write(dir.join("b.rs"), "fn f() { crate::a::{x::g, y::h}(); }\n").unwrap();
    std::fs::write(
        dir.join("c.rs"),
        "/// see [`crate::b`]\nconst S: &str = \"crate::b\";\n\
         #[cfg(test)]\nmod tests {\n    use crate::b::f;\n}\n",
    )
    .unwrap();
    let edges = graph(&dir);
    assert_eq!(
        edges["a::x"],
        BTreeSet::from(["b".to_string(), "a::y".to_string()])
    );
    assert!(
        edges["a::y"].is_empty() && edges["c"].is_empty(),
        "{edges:?}"
    );
    let found: Vec<String> = cycles(&edges).iter().map(|c| c.join(" -> ")).collect();
    assert_eq!(found, vec!["a::x -> b -> a::x".to_string()]);
    let _ = std::fs::remove_dir_all(&dir);
}
