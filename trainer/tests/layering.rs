//! The trainer's modules only look down: each belongs to a layer (below,
//! lowest first), and a module may name `crate::` paths of lower layers
//! only (and its own submodules). A module that reaches up, or across to
//! another module of its own layer, fails this test, as does a file that
//! no layer lists. The table is the map in `src/lib.rs`.

use std::path::{Path, PathBuf};

/// Layers, lowest first; a module is named by its path under `crate::`.
const LAYERS: &[&[&str]] = &[
    &["random"],
    &[
        "sys::stream",
        "sys::autograd",
        "sys::dist",
        "named_tensors",
        "lrn",
    ],
    &["sys::cuda"],
    &["sys::graph", "sys"],
    &["kernels::lrn", "kernels::sgd"],
    &["kernels", "dist"],
    &[
        "model",
        "optim::sgd",
        "optim::schedule",
        "input",
        "metric::log",
    ],
    &["optim", "metric::plot"],
    &["step", "checkpoint", "eval", "metric"],
    &["bench", "learner", "launch"],
];

/// The module a file defines: `src/kernels/lrn/mod.rs` -> `kernels::lrn`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The layer unit of a module path: the longest listed prefix.
fn unit_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &'static str)> = None;
    for (layer, units) in LAYERS.iter().enumerate() {
        for unit in *units {
            let covers = module == *unit || module.starts_with(&format!("{unit}::"));
            if covers && best.is_none_or(|(_, b)| unit.len() > b.len()) {
                best = Some((layer, unit));
            }
        }
    }
    best
}

/// Every `crate::a::b` path a source names, `use crate::{a, b::c}` groups
/// included, as module paths (the last segment may be an item).
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            if let Some(group) = tail.strip_prefix('{') {
                let inner = group.split('}').next().unwrap_or("");
                for item in inner.split(',') {
                    out.push(path_head(item.trim()));
                }
            } else {
                out.push(path_head(tail));
            }
            rest = tail;
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

fn path_head(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "bin") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The back edges in `src`, as "module -> named path" lines.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let module = module_of(src, &file);
        if module.is_empty() {
            continue; // lib.rs declares the modules
        }
        let Some((layer, unit)) = unit_of(&module) else {
            bad.push(format!(
                "{module}: in no layer (add it to tests/layering.rs)"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for path in crate_paths(&text) {
            let Some((to_layer, to_unit)) = unit_of(&path) else {
                bad.push(format!("{module} -> crate::{path}: in no layer"));
                continue;
            };
            let own = to_unit == unit || to_unit.starts_with(&format!("{unit}::"));
            if !own && to_layer >= layer {
                bad.push(format!(
                    "{module} (layer {layer}) -> crate::{path} (layer {to_layer})"
                ));
            }
        }
    }
    bad
}

#[test]
fn modules_only_look_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(
        bad.is_empty(),
        "modules that reach up or across:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_back_edge_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("sys")).unwrap();
    std::fs::write(src.join("model.rs"), "use crate::lrn::Lrn;\n").unwrap();
    std::fs::write(src.join("sys/cuda.rs"), "fn f() { crate::step::run(); }\n").unwrap();
    std::fs::write(
        src.join("lrn.rs"),
        "use crate::{sys::cuda, model::AlexNet};\n",
    )
    .unwrap();
    let bad = violations(src);
    assert_eq!(bad.len(), 3, "{bad:?}");
    assert!(bad
        .iter()
        .any(|b| b.starts_with("sys::cuda (layer 2) -> crate::step")));
    assert!(bad
        .iter()
        .any(|b| b.starts_with("lrn (layer 1) -> crate::sys::cuda")));
    assert!(bad
        .iter()
        .any(|b| b.starts_with("lrn (layer 1) -> crate::model")));
}
