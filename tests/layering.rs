//! The layers import in one direction only (docs/design.md, "Where things
//! are"): `domain` (pure rules) imports none of the others, `storage` (all
//! SQL) imports neither `http`, `app` nor `batch`, `http` (decode, dispatch,
//! encode) goes through `app` and never reaches `storage`, and neither
//! storage backend imports the other. Read from the source, so a `use` that
//! runs the wrong way fails here before it tangles the layers. Handlers also
//! never reach inside the App (its storage, configuration, session table or
//! auth hook): each handler takes the service it needs (`State<Arc<Seats>>`,
//! through axum `FromRef`), never the whole App, and the App's read-only
//! accessors are for the CLI and tests. Files under src/ stay short enough
//! to read beside each other. The tests' harness, crates/testkit, is a
//! dev-dependency only (never shipped), and it alone finds the binary
//! under test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layers a file under `dir` may not name, with why.
const RULES: &[(&str, &[&str], &str)] = &[
    (
        "src/domain",
        &[
            "storage", "http", "app", "batch", "cli", "sessions", "dbgate",
        ],
        "domain holds the pure rules every layer imports; it imports none of them",
    ),
    (
        "src/storage",
        &["http", "app", "batch", "cli", "sessions"],
        "storage answers in domain types; it knows nothing of HTTP or the App",
    ),
    (
        "src/http",
        &["storage"],
        "handlers decode, call the App and encode; the App talks to storage",
    ),
];

/// Known crossings still to be untangled, each with where it is. Keep this
/// list short and shrinking: a new entry needs a reason in its comment.
const KNOWN: &[(&str, &str)] = &[];

/// What is inside the App, which handlers never touch, field or accessor:
/// the decision that needs it is an App method.
const APP_INSIDES: &[&str] = &["storage", "config", "sessions", "auth_hook"];

/// Whether `code` names `.field` (a field or a method of that exact name).
fn names_member(code: &str, field: &str) -> bool {
    let needle = format!(".{field}");
    code.match_indices(&needle).any(|(i, _)| {
        !code[i + needle.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules of this crate that `text` names (`crate::x`, in
/// code, not in comments), including those in grouped imports
/// (`use crate::{x::…, y}`).
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.insert(name);
        }
    }
    out
}

#[test]
fn layers_import_in_one_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut known_seen = BTreeSet::new();
    for (dir, banned, why) in RULES {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        assert!(!files.is_empty(), "{dir} has no Rust files: update RULES");
        for f in files {
            let rel = f.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&f).unwrap();
            for m in crate_modules(&text) {
                if banned.contains(&m.as_str()) {
                    if KNOWN.contains(&(rel.as_str(), m.as_str())) {
                        known_seen.insert((rel.clone(), m));
                    } else {
                        problems.push(format!("{rel} imports crate::{m}: {why}"));
                    }
                }
            }
        }
    }
    // Handlers reach the database, the configuration, the session table and
    // the auth hook only through the App's methods.
    let mut files = Vec::new();
    rust_files(&root.join("src/http"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for field in APP_INSIDES {
                if names_member(code, field) {
                    problems.push(format!(
                        "{}:{}: a handler uses the App's {field} directly: add an App method that decides",
                        f.strip_prefix(root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    for (file, module) in KNOWN {
        assert!(
            known_seen.contains(&(file.to_string(), module.to_string())),
            "{file} no longer imports crate::{module}: remove it from KNOWN"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// How a handler would name the whole App as its state: handlers take the
/// service they need instead (issue 14; bors hands each handler its part
/// of the state the same way).
const WHOLE_APP: &[&str] = &["State<Arc<App>>", "State<App>", "State(app)"];

#[test]
fn handlers_take_services_not_the_app() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src/http"), &mut files);
    let mut problems = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code: String = line
                .split("//")
                .next()
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            for whole in WHOLE_APP {
                if code.contains(whole) {
                    problems.push(format!(
                        "{}:{}: a handler takes the whole App ({whole}): take the service it needs (State<Arc<Seats>>, …)",
                        f.strip_prefix(root).unwrap().display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn backends_do_not_import_each_other() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage");
    for (backend, other) in [("sqlite", "mysql"), ("mysql", "sqlite")] {
        let mut files = Vec::new();
        let dir = root.join(backend);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        }
        let file = root.join(format!("{backend}.rs"));
        if file.is_file() {
            files.push(file);
        }
        assert!(!files.is_empty(), "no {backend} backend found");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for needle in [
                format!("super::{other}"),
                format!("storage::{other}"),
                format!("{other}::"),
            ] {
                let hit = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .any(|l| l.contains(&needle) && !l.contains(&format!("sqlx::{other}")));
                assert!(
                    !hit,
                    "{} names {needle}: shared code belongs in storage/mod.rs, rows.rs or retry.rs",
                    f.display()
                );
            }
        }
    }
}

/// Both backends have the same role files, so each can be read beside the
/// other; the shared files (rows, retry) name neither backend.
#[test]
fn backends_have_the_same_role_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/storage");
    let names = |backend: &str| -> BTreeSet<String> {
        std::fs::read_dir(root.join(backend))
            .unwrap_or_else(|e| panic!("src/storage/{backend}/: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect()
    };
    let (mysql, sqlite) = (names("mysql"), names("sqlite"));
    assert_eq!(
        mysql, sqlite,
        "src/storage/mysql/ and src/storage/sqlite/ must hold the same role files"
    );
    for shared in ["rows.rs", "retry.rs"] {
        let text = std::fs::read_to_string(root.join(shared)).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for backend in ["mysql", "sqlite"] {
                let named = line.contains(&format!("{backend}::"))
                    && !line.contains(&format!("sqlx::{backend}::"));
                assert!(
                    !named,
                    "src/storage/{shared} names the {backend} backend: shared code serves both"
                );
            }
        }
    }
}

/// Longest file, in lines, anywhere under src/ (issue 14): a backend's role
/// file is read beside the other backend's, and no concern hides in a file
/// too long to read.
const MAX_LINES: usize = 800;

#[test]
fn source_files_stay_short() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    for dir in ["src"] {
        let mut files = Vec::new();
        rust_files(&root.join(dir), &mut files);
        assert!(!files.is_empty(), "{dir} has no Rust files");
        for f in files {
            let n = std::fs::read_to_string(&f).unwrap().lines().count();
            if n > MAX_LINES {
                long.push(format!(
                    "{} has {n} lines (at most {MAX_LINES}): split it by concern",
                    f.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(long.is_empty(), "{}", long.join("\n"));
}

#[test]
fn the_scanner_sees_grouped_and_inline_paths() {
    let m = crate_modules(
        "use crate::{storage::X, app};\n// crate::http in a comment\nfn f() { crate::batch::g() }",
    );
    assert_eq!(
        m.into_iter().collect::<Vec<_>>(),
        vec!["app".to_string(), "batch".into(), "storage".into()]
    );
}

#[test]
fn the_scanner_sees_app_insides_in_handlers() {
    assert!(names_member("app.config.lease_ttl", "config"));
    assert!(names_member("let c = app.config();", "config"));
    assert!(names_member("app.sessions.get(id)", "sessions"));
    assert!(names_member(
        "if let Some(h) = &app.auth_hook {",
        "auth_hook"
    ));
    assert!(names_member("app.storage", "storage"));
    assert!(!names_member("app.configure()", "config"));
    assert!(!names_member("app.session_counts()", "sessions"));
    assert!(!names_member("app.find_session(id)", "sessions"));
}

/// The tables of a manifest that are built into what ships (not
/// `[dev-dependencies]`), target-specific ones included.
fn shipped_dependency_tables(manifest: &toml::Table) -> Vec<&toml::Table> {
    let targets = manifest
        .get("target")
        .and_then(toml::Value::as_table)
        .into_iter()
        .flat_map(|t| t.values().filter_map(toml::Value::as_table));
    std::iter::once(manifest)
        .chain(targets)
        .flat_map(|t| {
            ["dependencies", "build-dependencies"]
                .into_iter()
                .filter_map(|key| t.get(key).and_then(toml::Value::as_table))
        })
        .collect()
}

/// Whether `deps` names the package `floatlm-testkit`, under its own name
/// or renamed (`testkit = { package = "floatlm-testkit", … }`).
fn names_testkit(deps: &toml::Table) -> bool {
    deps.iter().any(|(name, spec)| {
        name == "floatlm-testkit"
            || spec.get("package").and_then(toml::Value::as_str) == Some("floatlm-testkit")
    })
}

#[test]
fn the_test_harness_is_never_shipped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &Path| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(p).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let workspace = read(&root.join("Cargo.toml"));
    let members: Vec<&str> = workspace["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(members.contains(&"crates/testkit"), "{members:?}");
    let mut wrong = Vec::new();
    for m in &members {
        let manifest = read(&root.join(m).join("Cargo.toml"));
        if shipped_dependency_tables(&manifest)
            .into_iter()
            .any(names_testkit)
        {
            wrong.push(format!(
                "{m}/Cargo.toml depends on floatlm-testkit outside [dev-dependencies]"
            ));
        }
    }
    let testkit = read(&root.join("crates/testkit/Cargo.toml"));
    if testkit["package"]
        .get("publish")
        .and_then(toml::Value::as_bool)
        != Some(false)
    {
        wrong.push("crates/testkit/Cargo.toml must say publish = false".into());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn tests_find_the_binary_through_testkit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Split so that this file does not name them itself.
    let bin_env = concat!("CARGO_BIN", "_EXE_");
    let common = concat!("mod ", "common");
    let dead_code = concat!("allow(", "dead_code)");
    let mut wrong = Vec::new();
    let mut files = Vec::new();
    rust_files(&root.join("tests"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.strip_prefix(root).unwrap().display();
        if text.contains(bin_env) {
            wrong.push(format!("{name} names {bin_env}*: use testkit::bin()"));
        }
        if text.contains(common) {
            wrong.push(format!("{name} has `{common}`: use testkit::…"));
        }
    }
    let mut files = Vec::new();
    rust_files(&root.join("crates/testkit/src"), &mut files);
    for f in files {
        if std::fs::read_to_string(&f).unwrap().contains(dead_code) {
            wrong.push(format!(
                "{} has {dead_code}: what no test uses is private or gone",
                f.strip_prefix(root).unwrap().display()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_manifest_scan_sees_a_renamed_testkit() {
    let m: toml::Table = toml::from_str(
        "[dependencies]\ntk = { package = \"floatlm-testkit\", path = \"x\" }\n\
         [target.'cfg(unix)'.build-dependencies]\nfloatlm-testkit = \"1\"\n\
         [dev-dependencies]\ntestkit = { package = \"floatlm-testkit\", path = \"x\" }\n",
    )
    .unwrap();
    let shipped = shipped_dependency_tables(&m);
    assert_eq!(shipped.len(), 2);
    assert!(shipped.into_iter().all(names_testkit));
    assert!(!names_testkit(&toml::from_str("serde = \"1\"").unwrap()));
}
