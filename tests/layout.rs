//! The layout of `src/` (issue 11): no import cycles between its files.
//!
//! Every path a file names (`use crate::…`, `use super::…`, `crate::a::b::f()` inline, nested
//! `{…}` groups included) is resolved to the file that defines the module it reaches, and the
//! strongly connected components of that file graph are listed. A child module that only
//! declares `mod x;` does not import `x`; `use super::*` in an inline `mod tests` reaches its
//! own file. The count is printed, and must be 0.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["probe", "http"]`) of every file under `src/` (the crate root is `[]`).
fn modules(src: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            if rel == Path::new("main.rs") {
                continue; // the binary crate: it imports the library by name, never `crate::`
            }
            out.insert(parts, path);
        }
    }
    out
}

/// The code of a file without comments and string literals (so neither can fake an import).
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                    }
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' or '{' ; lifetimes ('a) pass through.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let literal = rest.starts_with('\\') && rest.len() == 3 && rest.ends_with('\'')
                    || rest.chars().nth(1) == Some('\'');
                if literal {
                    let skip = if rest.starts_with('\\') { 3 } else { 2 };
                    for _ in 0..skip {
                        chars.next();
                    }
                    out.push_str("' '");
                } else {
                    out.push('\'');
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Paths of two or more segments (`crate::a::B`, `super::{x, y}`, `child::f`), with `{…}` groups
/// expanded, each paired with the inline-module depth (`mod tests {`) it was written at.
fn paths(code: &str) -> Vec<(Vec<String>, usize)> {
    let mut found = Vec::new();
    let mut inline: Vec<usize> = Vec::new(); // brace depth at which each inline mod opened
    let mut depth = 0usize;
    let bytes = code.as_bytes();
    let mut i = 0;
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'{' {
            depth += 1;
            i += 1;
            continue;
        }
        if b == b'}' {
            if inline.last() == Some(&depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
            continue;
        }
        let boundary = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if boundary && code[i..].starts_with("mod ") {
            let rest = &code[i + 4..];
            let name_len = rest.bytes().take_while(|b| is_ident(*b)).count();
            if rest[name_len..].trim_start().starts_with('{') {
                inline.push(depth + 1);
            }
        }
        let ident_len = code[i..].bytes().take_while(|b| is_ident(*b)).count();
        if boundary && ident_len > 0 && code[i + ident_len..].starts_with("::") {
            let end = path_end(code, i);
            for path in expand(&code[i..end]) {
                found.push((path, inline.len()));
            }
            i = end;
            continue;
        }
        i += 1;
    }
    found
}

/// Where the path starting at `start` ends: identifiers, `::`, balanced `{…}` groups.
fn path_end(code: &str, start: usize) -> usize {
    let bytes = code.as_bytes();
    let mut i = start;
    let mut groups = 0usize;
    while i < bytes.len() {
        let b = bytes[i];
        let ok = b.is_ascii_alphanumeric()
            || b == b'_'
            || b == b':'
            || b == b'*'
            || (groups > 0 && (b == b',' || b.is_ascii_whitespace() || b == b'{'));
        if b == b'{' {
            groups += 1;
        } else if b == b'}' {
            if groups == 0 {
                break;
            }
            groups -= 1;
        } else if !ok {
            break;
        }
        i += 1;
    }
    i
}

/// `super::{a::B, c}` to `[super, a, B]` and `[super, c]`.
fn expand(text: &str) -> Vec<Vec<String>> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = text.find('{') else {
        return vec![segments(&text)];
    };
    let prefix = text[..open].trim_end_matches("::");
    let inner = &text[open + 1..text.rfind('}').unwrap_or(text.len())];
    let mut items = Vec::new();
    let mut level = 0;
    let mut current = String::new();
    for c in inner.chars() {
        match c {
            '{' => level += 1,
            '}' => level -= 1,
            ',' if level == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .filter(|item| !item.is_empty())
        .flat_map(|item| {
            let joined = if item == "self" {
                prefix.to_owned()
            } else {
                format!("{prefix}::{item}")
            };
            expand(&joined)
        })
        .collect()
}

fn segments(text: &str) -> Vec<String> {
    text.split("::")
        .filter(|s| !s.is_empty() && *s != "*")
        .map(str::to_owned)
        .collect()
}

/// The file a path reaches: the longest prefix of it that names a module with a file.
fn resolve(
    files: &BTreeMap<Vec<String>, PathBuf>,
    here: &[String],
    inline_depth: usize,
    path: &[String],
) -> Option<Vec<String>> {
    let mut module: Vec<String> = here.to_vec();
    let mut rest = path;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            module.clear();
            rest = &rest[1..];
        }
        Some("super") => {
            let mut supers = 0usize;
            while rest.first().map(String::as_str) == Some("super") {
                supers += 1;
                rest = &rest[1..];
            }
            // `super` inside an inline module first climbs out of it, staying in this file.
            let out_of_file = supers.saturating_sub(inline_depth);
            for _ in 0..out_of_file {
                module.pop()?;
            }
        }
        Some("self") => rest = &rest[1..],
        // A bare path reaches a module of ours only through a child of this one (anything else
        // is an external crate or a type).
        Some(first) if inline_depth == 0 => {
            let mut child = module.clone();
            child.push(first.to_owned());
            if !files.contains_key(&child) {
                return None;
            }
        }
        _ => return None,
    }
    let mut best = module.clone();
    for segment in rest {
        module.push(segment.clone());
        if files.contains_key(&module) {
            best = module.clone();
        } else {
            break;
        }
    }
    files.contains_key(&best).then_some(best)
}

/// Tarjan's strongly connected components, those with more than one file.
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        graph: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            let Some((w, _)) = s.graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.out
}

fn import_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files = modules(src);
    let mut graph = BTreeMap::new();
    for (module, path) in &files {
        let code = code_only(&std::fs::read_to_string(path).unwrap());
        let mut targets = BTreeSet::new();
        for (p, inline_depth) in paths(&code) {
            if let Some(target) = resolve(&files, module, inline_depth, &p)
                && target != *module
            {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".to_owned()
    } else {
        module.join("::")
    }
}

#[test]
fn src_has_no_import_cycles() {
    let graph = import_graph(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let edges: usize = graph.values().map(BTreeSet::len).sum();
    let found = cycles(&graph);
    println!(
        "src/: {} files, {edges} imports between them, {} import cycles",
        graph.len(),
        found.len()
    );
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let members: Vec<String> = component.iter().map(|m| name(m)).collect();
            let ties: Vec<String> = component
                .iter()
                .flat_map(|from| {
                    graph[from]
                        .iter()
                        .filter(|to| component.contains(to))
                        .map(move |to| format!("{} -> {}", name(from), name(to)))
                })
                .collect();
            format!("{{{}}}: {}", members.join(", "), ties.join("; "))
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles between files of src/:\n{}",
        described.join("\n")
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    // Guards the test above against passing because it reads nothing: a made-up tree with one
    // cycle through a grouped `use super::{…}` and an inline path, and one clean file.
    let dir = std::env::temp_dir().join(format!("regionprobe-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(
        dir.join("a/mod.rs"),
        "mod x;\npub use x::X;\npub struct Y;\n#[cfg(test)]\nmod tests { use super::*; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a/x.rs"),
        "// use crate::b; in a comment\nuse super::{Y as _, x};\npub struct X;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.rs"),
        "fn f() { let s = \"crate::a\"; crate::a::Y; }\n",
    )
    .unwrap();
    let graph = import_graph(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let module = |s: &str| -> Vec<String> { s.split("::").map(str::to_owned).collect() };
    assert_eq!(cycles(&graph), vec![vec![module("a"), module("a::x")]]);
    assert_eq!(graph[&module("b")], BTreeSet::from([module("a")]));
    assert!(graph[&Vec::new()].is_empty(), "`mod a;` is no import");
}
