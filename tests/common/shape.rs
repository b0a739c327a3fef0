//! JSON shape snapshots: every path of a `--format json` output with the kinds of value
//! found there, against tests/snapshots/NAME.shape, so a renamed, added or removed field (or
//! one whose kind changes) fails a test until the snapshot is updated on purpose
//! (`STASIS_UPDATE_SNAPSHOTS=1`).
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// Each JSON path with the kinds of value found there, one `path: kinds` line each: a
/// renamed, added or removed field, or one whose kind changes, changes the shape.
pub fn shape(v: &Value) -> String {
    fn kind(v: &Value) -> &'static str {
        match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    fn walk(
        v: &Value,
        path: &str,
        out: &mut std::collections::BTreeMap<String, BTreeSet<&'static str>>,
    ) {
        out.entry(path.to_string()).or_default().insert(kind(v));
        match v {
            Value::Array(a) => {
                for e in a {
                    walk(e, &format!("{path}[]"), out);
                }
            }
            Value::Object(o) => {
                for (k, e) in o {
                    walk(e, &format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut m = Default::default();
    walk(v, "", &mut m);
    m.into_iter()
        .map(|(p, k)| {
            let p = if p.is_empty() { ".".to_string() } else { p };
            format!("{p}: {}\n", k.into_iter().collect::<Vec<_>>().join("|"))
        })
        .collect()
}

/// Compares with tests/snapshots/NAME.shape; `STASIS_UPDATE_SNAPSHOTS=1` rewrites it.
pub fn check_shape(name: &str, v: &Value, failures: &mut Vec<String>) {
    let got = shape(v);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.shape"));
    if std::env::var_os("STASIS_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, &got).expect("write snapshot");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        let g: BTreeSet<&str> = got.lines().collect();
        let w: BTreeSet<&str> = want.lines().collect();
        failures.push(format!(
            "{name}: JSON shape changed (tests/snapshots/{name}.shape)\n  only now: {:?}\n  only in the snapshot: {:?}",
            g.difference(&w).collect::<Vec<_>>(),
            w.difference(&g).collect::<Vec<_>>()
        ));
    }
}
