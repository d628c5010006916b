//! The import rules of docs/ARCHITECTURE.md, checked on the source: no cycles between files or
//! between top-level modules, and the layers that import nothing of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every source file of `src/` as its module path (`src/notebook/app.rs` → `notebook::app`,
/// a `mod.rs` as its folder), with its text up to its tests.
fn modules() -> BTreeMap<Module, String> {
    fn walk(dir: &Path, out: &mut BTreeMap<Module, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix("src").unwrap().with_extension("");
                let mut parts: Module = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|l| l == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] || parts == ["main"] {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                let code: String = code
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n");
                out.insert(parts, code);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(Path::new("src"), &mut out);
    out
}

/// The modules each file names through `crate::`, `super::` or `self::` paths (the longest
/// prefix that is a file), itself left out.
fn edges(mods: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let path = regex::Regex::new(r"\b(crate|super|self)((?:::\w+)+|::\{[^;]*?\})").unwrap();
    let word = regex::Regex::new(r"\w+(?:::\w+)*").unwrap();
    let resolve = |cur: &Module, head: &str, rest: &[&str]| -> Option<Module> {
        let mut full: Module = match head {
            "crate" => Vec::new(),
            _ => cur.clone(),
        };
        let mut rest = rest;
        if head == "super" {
            full.pop();
            while rest.first() == Some(&"super") {
                full.pop();
                rest = &rest[1..];
            }
        }
        full.extend(rest.iter().map(|s| s.to_string()));
        (0..=full.len())
            .rev()
            .map(|n| full[..n].to_vec())
            .find(|m| mods.contains_key(m))
    };
    let mut out = BTreeMap::new();
    for (m, code) in mods {
        let mut deps = BTreeSet::new();
        for c in path.captures_iter(code) {
            let head = &c[1];
            let tail = &c[2];
            let items: Vec<String> = if let Some(group) = tail.strip_prefix("::{") {
                word.find_iter(group)
                    .map(|w| w.as_str().to_string())
                    .collect()
            } else {
                vec![tail.trim_start_matches("::").to_string()]
            };
            for item in items {
                let rest: Vec<&str> = item.split("::").collect();
                if let Some(d) = resolve(m, head, &rest)
                    && &d != m
                {
                    deps.insert(d);
                }
            }
        }
        out.insert(m.clone(), deps);
    }
    out
}

/// A cycle in `graph`, as the modules on it, if there is one.
fn cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        v: &Module,
        g: &BTreeMap<Module, BTreeSet<Module>>,
        state: &mut BTreeMap<Module, u8>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        state.insert(v.clone(), 1);
        stack.push(v.clone());
        for w in g.get(v).into_iter().flatten() {
            match state.get(w) {
                Some(1) => {
                    let from = stack.iter().position(|x| x == w).unwrap();
                    return Some(stack[from..].to_vec());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(w, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(v.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in graph.keys() {
        if !state.contains_key(v)
            && let Some(c) = visit(v, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn show(c: &[Module]) -> String {
    c.iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" → ")
}

#[test]
fn no_file_imports_itself_through_a_cycle() {
    let g = edges(&modules());
    assert!(g.len() > 50, "read the source tree ({} files)", g.len());
    if let Some(c) = cycle(&g) {
        panic!("import cycle between files: {}", show(&c));
    }
}

#[test]
fn top_level_modules_import_one_way_and_the_leaves_import_nothing() {
    let g = edges(&modules());
    let mut top: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, deps) in &g {
        let Some(a) = m.first() else { continue };
        for d in deps {
            if let Some(b) = d.first()
                && a != b
            {
                top.entry(vec![a.clone()])
                    .or_default()
                    .insert(vec![b.clone()]);
            }
        }
    }
    if let Some(c) = cycle(&top) {
        panic!("import cycle between modules: {}", show(&c));
    }
    let imports = |m: &str| -> Vec<String> {
        top.get(&vec![m.to_string()])
            .into_iter()
            .flatten()
            .map(|d| d.join("::"))
            .collect()
    };
    for leaf in ["cpu", "untrusted"] {
        assert_eq!(imports(leaf), Vec::<String>::new(), "{leaf} imports");
    }
    for m in ["spec", "runfs"] {
        assert_eq!(imports(m), ["untrusted"], "{m} imports");
    }
    for m in ["model", "stages", "tasks", "analysis", "runfs", "spec"] {
        assert!(
            !imports(m).iter().any(|d| d == "notebook" || d == "cli"),
            "{m} imports the screen or the command line: {:?}",
            imports(m)
        );
    }
}
