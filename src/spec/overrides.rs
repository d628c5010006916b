//! `--set KEY=VALUE`: change a value of the spec for one run without editing the file.
//! Keys are `stage.<name>.<key>`, `model.<key>`, `task.<key>`, `task.corpus.<key>` or a top-level
//! key such as `seed`. Values are TOML (`0.1`, `true`, `"text"`); a bare word is taken as a string.

use super::{ExperimentSpec, Origin, SpecError};
use std::collections::HashMap;

/// Overrides that were applied: the canonical path (`stage.3.lr`, `model.d_model`) → the
/// `KEY=VALUE` text as the user wrote it, so validation can point at the argument.
pub type Applied = HashMap<String, String>;

/// Apply `sets` to `spec`, in order.
pub fn apply(spec: &mut ExperimentSpec, sets: &[String]) -> Result<Applied, SpecError> {
    let mut applied = Applied::new();
    for set in sets {
        let err = |message: String| SpecError {
            origin: Origin::Override(set.clone()),
            message,
        };
        let (key, raw) = set
            .split_once('=')
            .ok_or_else(|| err("expected KEY=VALUE".into()))?;
        let (key, raw) = (key.trim(), raw.trim());
        let value = parse_value(raw).map_err(err)?;
        let mut doc = toml::Value::try_from(&*spec).map_err(|e| err(e.to_string()))?;
        let parts: Vec<&str> = key.split('.').collect();
        let canonical = set_path(&mut doc, &parts).map_err(err)?;
        let target = lookup_mut(&mut doc, &canonical).expect("path was just resolved");
        *target = value;
        *spec = doc
            .try_into()
            .map_err(|e: toml::de::Error| err(e.message().trim().to_string()))?;
        applied.insert(canonical.join("."), set.clone());
    }
    Ok(applied)
}

/// A TOML value; a bare word is a string, but a number TOML cannot hold is an error (else
/// `seed=18446744073709551615` would become the string "18446744073709551615").
fn parse_value(raw: &str) -> Result<toml::Value, String> {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => Ok(t.remove("v").unwrap_or(toml::Value::String(raw.into()))),
        Err(_) => {
            let digits = raw.strip_prefix(['-', '+']).unwrap_or(raw).replace('_', "");
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`{raw}` is out of range: integers are at most {} (2^63 - 1)",
                    i64::MAX
                ));
            }
            Ok(toml::Value::String(raw.to_string()))
        }
    }
}

/// Resolve a user key to a canonical path of table keys and array indices, creating the last
/// table key if it is absent (the spec decides later whether it is allowed).
fn set_path(doc: &mut toml::Value, parts: &[&str]) -> Result<Vec<String>, String> {
    match parts {
        [] | [""] => Err("empty key".into()),
        ["stage", name, rest @ ..] => {
            let stages = doc
                .get("stage")
                .and_then(|s| s.as_array())
                .ok_or("the spec has no stages")?;
            let i = stages
                .iter()
                .position(|s| s.get("name").and_then(|n| n.as_str()) == Some(*name))
                .ok_or_else(|| format!("no stage named `{name}`"))?;
            if rest.is_empty() {
                return Err("expected stage.<name>.<key>".into());
            }
            let mut path = vec!["stage".to_string(), i.to_string()];
            path.extend(rest.iter().map(|s| s.to_string()));
            ensure_tables(doc, &path)?;
            Ok(path)
        }
        _ => {
            let path: Vec<String> = parts.iter().map(|s| s.to_string()).collect();
            ensure_tables(doc, &path)?;
            Ok(path)
        }
    }
}

fn ensure_tables(doc: &mut toml::Value, path: &[String]) -> Result<(), String> {
    let mut cur = doc;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        cur = match cur {
            toml::Value::Table(t) => {
                if last {
                    t.entry(seg.clone()).or_insert(toml::Value::Boolean(false));
                    return Ok(());
                }
                t.entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let n: usize = seg
                    .parse()
                    .map_err(|_| format!("`{seg}` is not an index"))?;
                a.get_mut(n).ok_or_else(|| format!("no item {n}"))?
            }
            _ => return Err(format!("`{}` is not a table", path[..i].join("."))),
        };
    }
    Ok(())
}

fn lookup_mut<'a>(doc: &'a mut toml::Value, path: &[String]) -> Option<&'a mut toml::Value> {
    let mut cur = doc;
    for seg in path {
        cur = match cur {
            toml::Value::Table(t) => t.get_mut(seg)?,
            toml::Value::Array(a) => a.get_mut(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::parse_value;

    #[test]
    fn numbers_toml_cannot_hold_are_errors_not_strings() {
        let e = parse_value("18446744073709551615").unwrap_err();
        assert!(
            e.contains("out of range") && e.contains("9223372036854775807"),
            "{e}"
        );
        assert!(parse_value("-99999999999999999999").is_err());
        assert_eq!(parse_value("42").unwrap(), toml::Value::Integer(42));
        assert_eq!(
            parse_value("arith").unwrap(),
            toml::Value::String("arith".into())
        );
    }
}
