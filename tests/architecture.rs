//! ARCHITECTURE.md's rules about imports, checked against `src/`.
//!
//! The layers table in ARCHITECTURE.md is the source of truth: this test
//! reads it, then reads every file under `src/` (up to its `#[cfg(test)]`
//! module) and follows each `crate::` and `super::` path. It fails when
//!
//! - a module imports from a higher layer, or from another top-level module
//!   of its own layer (the concepts of one layer are independent of each
//!   other; the parts of one concept, such as `exporter::cli` and
//!   `exporter::demo`, may use each other, but never in a circle);
//! - sibling files import each other in a circle (a folder's `mod.rs` may
//!   use the files it declares, and they may use it: that is a room and its
//!   parts, not a circle);
//! - a file under `src/` has more than 1,000 lines before its tests;
//! - a module is missing from the table, or the table names a module that
//!   does not exist (the map must stay true).
//!
//! The scan is lexical (comments and string literals are skipped), which is
//! enough for a crate that writes its paths the ordinary way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES_BEFORE_TESTS: usize = 1000;

/// One row of the layers table: its rank and the module paths it holds.
struct Layers {
    /// `["exporter", "cli"]` → rank; the longest prefix of a file's module
    /// path decides its layer.
    rank_of: BTreeMap<Vec<String>, (usize, String)>,
}

impl Layers {
    fn read(root: &Path) -> Layers {
        let text = std::fs::read_to_string(root.join("ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md at the top of the project");
        let start = text.find("<!-- layers -->").expect("ARCHITECTURE.md marks its layers table");
        let mut rank_of = BTreeMap::new();
        let rows = text[start..]
            .lines()
            .skip(1)
            .skip_while(|l| l.trim().is_empty())
            .take_while(|l| l.starts_with('|'))
            .skip(2); // header and separator
        for (rank, row) in rows.enumerate() {
            let cells: Vec<&str> = row.trim_matches('|').split('|').collect();
            let [name, modules, ..] = cells[..] else { panic!("layers row {row:?}") };
            let name = name.trim().trim_matches('*').to_string();
            for module in modules.split('`').skip(1).step_by(2) {
                let path: Vec<String> = module.split("::").map(str::to_string).collect();
                let before = rank_of.insert(path, (rank, name.clone()));
                assert!(before.is_none(), "ARCHITECTURE.md lists `{module}` twice");
            }
        }
        assert!(rank_of.len() > 3, "ARCHITECTURE.md's layers table has too few modules");
        Layers { rank_of }
    }

    /// The layer of a module path, and the table entry that decided it.
    fn of(&self, module: &[String]) -> Option<(usize, &str, &[String])> {
        (1..=module.len()).rev().find_map(|n| {
            self.rank_of
                .get_key_value(&module[..n])
                .map(|(k, (r, name))| (*r, name.as_str(), &k[..]))
        })
    }
}

/// A source file and what it refers to.
struct SourceFile {
    path: PathBuf,
    /// `crate::a::b` for `src/a/b.rs` and `src/a/b/mod.rs`.
    module: Vec<String>,
    /// Whether the file is a folder's `mod.rs` (or `lib.rs`).
    is_folder: bool,
    code: String,
    lines_before_tests: usize,
}

fn read_sources(src: &Path) -> Vec<SourceFile> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).unwrap().with_extension("");
                let mut module: Vec<String> =
                    relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                let is_folder = matches!(module.last().map(String::as_str), Some("mod" | "lib"));
                if is_folder {
                    module.pop();
                }
                let text = std::fs::read_to_string(&path).unwrap();
                let before_tests = text.find("\n#[cfg(test)]").map_or(&text[..], |i| &text[..i]);
                files.push(SourceFile {
                    module,
                    is_folder,
                    lines_before_tests: before_tests.lines().count(),
                    code: strip_comments_and_strings(before_tests),
                    path,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// The code with comments, string and char literals blanked out, so that
/// a path in a doc comment or a message is not taken for an import.
fn strip_comments_and_strings(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r' && matches!(next, Some('#' | '"')) && !ident_before(&chars, i) {
            // A raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1a}') or a lifetime ('a).
            let end = if next == Some('\\') {
                chars[i + 2..].iter().position(|&c| c == '\'').map(|p| i + 2 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    out.push_str("' '");
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Every module path `code` names through `crate::` or `super::`, brace
/// groups expanded: `crate::{a::B, c}` gives `a::B` and `c`.
fn referenced_paths(code: &str, file: &SourceFile) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let base = if !boundary || bytes.get(i.wrapping_sub(1)) == Some(&b':') {
            None
        } else if rest.starts_with("crate::") {
            i += "crate::".len();
            Some(Vec::new())
        } else if rest.starts_with("super::") {
            // `super` is the folder of a plain file, the parent of a folder.
            let mut base = file.module.clone();
            if file.is_folder || !base.is_empty() {
                base.pop();
            }
            i += "super::".len();
            while code[i..].starts_with("super::") {
                base.pop();
                i += "super::".len();
            }
            Some(base)
        } else {
            None
        };
        match base {
            Some(base) => i = expand(code, i, base, &mut out),
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

/// Reads a path (or a brace group of paths) at `i`, appending each to
/// `prefix`; returns where it ended.
fn expand(code: &str, mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let bytes = code.as_bytes();
    let mut path = prefix;
    loop {
        while bytes.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        if bytes.get(i) == Some(&b'{') {
            i += 1;
            loop {
                i = expand(code, i, path.clone(), out);
                while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace() || *b == b',') {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'}') || i >= bytes.len() {
                    return i + 1;
                }
            }
        }
        let start = i;
        while bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_') {
            i += 1;
        }
        if start == i {
            break;
        }
        path.push(code[start..i].to_string());
        if code[i..].starts_with("::") {
            i += 2;
        } else {
            break;
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    i
}

/// The module (a file's module path) that a referenced path lands in: its
/// longest prefix that is a module of the crate.
fn target_module<'m>(
    path: &[String],
    modules: &'m BTreeSet<Vec<String>>,
) -> Option<&'m Vec<String>> {
    (1..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn imports_only_go_down_the_layers() {
    let layers = Layers::read(&root());
    let files = read_sources(&root().join("src"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut problems = Vec::new();
    for file in files.iter().filter(|f| !f.module.is_empty()) {
        let Some((rank, layer, entry)) = layers.of(&file.module) else {
            problems.push(format!(
                "{}: module `{}` is in no layer of ARCHITECTURE.md",
                file.path.display(),
                file.module.join("::")
            ));
            continue;
        };
        let mut seen = BTreeSet::new();
        for path in referenced_paths(&file.code, file) {
            let Some(target) = target_module(&path, &modules) else { continue };
            let Some((target_rank, target_layer, target_entry)) = layers.of(target) else {
                continue;
            };
            let upward = target_rank > rank;
            let sideways = target_rank == rank && target_entry[0] != entry[0];
            if (upward || sideways) && seen.insert(target.clone()) {
                problems.push(format!(
                    "{}: `{}` ({layer}) imports `{}` ({target_layer}){}",
                    file.path.display(),
                    file.module.join("::"),
                    path.join("::"),
                    if upward { ", a higher layer" } else { ", another module of its layer" },
                ));
            }
        }
    }
    assert!(problems.is_empty(), "imports against ARCHITECTURE.md:\n{}", problems.join("\n"));
}

#[test]
fn the_layers_table_names_every_top_module_and_nothing_else() {
    let layers = Layers::read(&root());
    let files = read_sources(&root().join("src"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    for listed in layers.rank_of.keys() {
        assert!(
            modules.contains(listed),
            "ARCHITECTURE.md lists `{}`, which is not in src/",
            listed.join("::")
        );
    }
    for module in modules.iter().filter(|m| m.len() == 1) {
        assert!(
            layers.of(module).is_some(),
            "`{}` is missing from ARCHITECTURE.md's layers",
            module[0]
        );
    }
}

#[test]
fn sibling_files_never_import_each_other_in_a_circle() {
    let files = read_sources(&root().join("src"));
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    // Edges between files; a folder's mod.rs using its own parts is not one.
    let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for file in &files {
        for path in referenced_paths(&file.code, file) {
            let Some(target) = target_module(&path, &modules) else { continue };
            let into_own_part = file.is_folder && target.starts_with(&file.module);
            if target != &file.module && !into_own_part {
                edges.entry(&file.module).or_default().insert(target);
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit<'m>(
        node: &'m Vec<String>,
        edges: &BTreeMap<&'m Vec<String>, BTreeSet<&'m Vec<String>>>,
        stack: &mut Vec<&'m Vec<String>>,
        done: &mut BTreeSet<&'m Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            cycle.push(node.join("::"));
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        if let Some(cycle) = visit(module, &edges, &mut Vec::new(), &mut done) {
            panic!("files import each other in a circle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn no_source_file_is_longer_than_a_thousand_lines_before_its_tests() {
    let long: Vec<String> = read_sources(&root().join("src"))
        .into_iter()
        .filter(|f| f.lines_before_tests > MAX_LINES_BEFORE_TESTS)
        .map(|f| format!("{}: {} lines", f.path.display(), f.lines_before_tests))
        .collect();
    assert!(long.is_empty(), "split these along their seams:\n{}", long.join("\n"));
}

#[test]
fn the_scanner_reads_paths_as_rust_does() {
    let file = SourceFile {
        path: PathBuf::from("src/rules/job.rs"),
        module: vec!["rules".into(), "job".into()],
        is_folder: false,
        code: String::new(),
        lines_before_tests: 0,
    };
    let code = strip_comments_and_strings(
        "use crate::{a::B, c::{D, e::F}};\n// crate::commented\nlet s = \"crate::quoted\";\n\
         let c = '\"'; use super::device::X; f(crate::error::with_causes(&e)); x.crate_y::z;",
    );
    let found: Vec<String> = referenced_paths(&code, &file).iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["a::B", "c::D", "c::e::F", "rules::device::X", "error::with_causes"]);
}
