//! Two store configs compared: the keys at which they differ, said with both values,
//! and the refusal a writer makes over them.

use std::path::Path;

use super::{StoreConfig, TeacherInfo};
use crate::StoreError;

/// Refuse `found` (the config of the manifest at `path`) unless it equals `want`:
/// `what` says whose config differs, and the error lists the differing keys with both
/// values ([`describe_diff`]).
pub(crate) fn require_same_config(
    path: &Path,
    found: &StoreConfig,
    want: &StoreConfig,
    what: &str,
    sides: [&str; 2],
) -> Result<(), StoreError> {
    let diff = config_diff(found, want);
    if diff.is_empty() {
        return Ok(());
    }
    // only the dataset differs: most often an image fixed (or added, removed) after a
    // run that stopped on it; the shards hold the old images' labels and the store's
    // fingerprint covers them all, so it cannot go on: say what can
    let hint = match diff.iter().all(|k| k.starts_with("dataset.")) {
        true => {
            "; the dataset changed since this store was started (an image added, removed, \
             renamed or relabelled, or another dataset): write the store in another \
             directory, or remove this one to start over"
        }
        false => "",
    };
    Err(StoreError::Mismatch {
        path: path.to_path_buf(),
        reason: format!(
            "{what}; differing keys: {}{hint}",
            describe_diff(found, want, &diff, sides).join("; ")
        ),
    })
}

/// Each differing key of `diff` (from [`config_diff`]) with its value in `found` and in
/// `want`, each side named by `sides` (["store", "now"]: `crop_pool.seed (store: 0,
/// now: 3)`; two workers' parts by their files). Hashes are cut to 12 digits, long lists
/// to their length; teachers listed in another order are said to be that.
pub fn describe_diff(
    found: &StoreConfig,
    want: &StoreConfig,
    diff: &[String],
    sides: [&str; 2],
) -> Vec<String> {
    let [fs, ws] = sides;
    use serde_json::Value;
    let teachers = |c: &StoreConfig| {
        c.teachers
            .iter()
            .map(|t| t.arch.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    // the same teachers (by content and input) in another order: one line, not one per
    // field of each
    let (mut a, mut b): (Vec<String>, Vec<String>) = (
        found.teachers.iter().map(TeacherInfo::by_content).collect(),
        want.teachers.iter().map(TeacherInfo::by_content).collect(),
    );
    a.sort();
    b.sort();
    let reordered = a == b && diff.iter().any(|k| k.starts_with("teachers"));
    let (fv, wv) = (
        serde_json::to_value(found).unwrap_or(Value::Null),
        serde_json::to_value(want).unwrap_or(Value::Null),
    );
    let mut out = Vec::new();
    if reordered {
        out.push(format!(
            "teachers: the same teachers in another order ({fs}: {}; {ws}: {}): give them \
             in the store's order",
            teachers(found),
            teachers(want)
        ));
    } else if found.teachers.len() != want.teachers.len() {
        out.push(format!(
            "teachers ({fs}: {} teachers, {}; {ws}: {}, {})",
            found.teachers.len(),
            teachers(found),
            want.teachers.len(),
            teachers(want)
        ));
    }
    for k in diff {
        if k.starts_with("teachers") && (reordered || found.teachers.len() != want.teachers.len()) {
            continue;
        }
        let (a, b) = (pointer(&fv, k), pointer(&wv, k));
        // a teacher's logits, taken by class name: the first class whose logit differs
        // (both lists hold as many values, one a class)
        if let (true, Some(Value::Array(x)), Some(Value::Array(y))) = (k.ends_with(".logits"), a, b)
        {
            if let Some((i, (u, v))) = x.iter().zip(y).enumerate().find(|(_, (u, v))| u != v) {
                let class = found.classes.get(i).map_or("?", String::as_str);
                out.push(format!(
                    "{k} (class {class} is the teacher's logit {u} ({fs}), {v} ({ws}): \
                     another class list or record)"
                ));
                continue;
            }
        }
        // the class names: the first that differs ("10 values" both sides said nothing)
        if k == "classes" {
            let (x, y) = (&found.classes, &want.classes);
            let at = x.iter().zip(y).position(|(u, v)| u != v);
            out.push(match at {
                Some(i) => format!(
                    "classes (class {i} is \"{}\" ({fs}), \"{}\" ({ws}); {} and {} classes)",
                    x[i],
                    y[i],
                    x.len(),
                    y.len()
                ),
                None => format!("classes ({fs}: {}, {ws}: {})", x.len(), y.len()),
            });
            continue;
        }
        out.push(format!("{k} ({fs}: {}, {ws}: {})", show(a), show(b)));
    }
    out
}

/// The value at the dotted key `key` (`teachers[1].filter`) of `v`.
fn pointer<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    key.split('.')
        .try_fold(v, |v, part| match part.split_once('[') {
            Some((name, i)) => v
                .get(name)?
                .get(i.trim_end_matches(']').parse::<usize>().ok()?),
            None => v.get(part),
        })
}

/// A config value for a message: numbers and lists as written in flags (`0.08,1`),
/// hashes cut to 12 digits, lists of more than 4 values by their length.
fn show(v: Option<&serde_json::Value>) -> String {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => "none".into(),
        Some(Value::String(s)) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("{}...", &s[..12])
        }
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() > 4 => format!("{} values", a.len()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| show(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        // f32 fields (mean, std) widened to f64: their shortest f32 text (0.485, not
        // 0.48500001430511475)
        Some(Value::Number(n)) if n.is_f64() => {
            n.as_f64().map_or(n.to_string(), |f| (f as f32).to_string())
        }
        Some(v) => v.to_string(),
    }
}

/// The keys (dotted paths, `teachers[1].filter`) at which two configs differ. A teacher
/// is its weights' content: the file name (`teachers[i].weights`) is not compared, so a
/// renamed or moved copy of the same file resumes the store (its sha256 still differs
/// for other weights).
pub fn config_diff(a: &StoreConfig, b: &StoreConfig) -> Vec<String> {
    use serde_json::Value;
    fn walk(p: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let q = if p.is_empty() {
                        k.clone()
                    } else {
                        format!("{p}.{k}")
                    };
                    walk(
                        &q,
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        out,
                    );
                }
            }
            // lists of records (teachers) element by element where both have as many;
            // any other list differs as a whole (`crop_pool.scale`, `classes`)
            (Value::Array(x), Value::Array(y))
                if x.len() == y.len() && x.iter().chain(y).all(Value::is_object) =>
            {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(&format!("{p}[{i}]"), u, v, out);
                }
            }
            _ if a != b => out.push(p.to_string()),
            _ => {}
        }
    }
    let value = |c: &StoreConfig| {
        let mut v = serde_json::to_value(c).expect("serialises");
        if let Some(ts) = v.get_mut("teachers").and_then(Value::as_array_mut) {
            for t in ts.iter_mut().filter_map(Value::as_object_mut) {
                t.remove("weights");
            }
        }
        v
    };
    let mut out = Vec::new();
    walk("", &value(a), &value(b), &mut out);
    out
}
