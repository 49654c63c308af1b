//! Command-line overrides (`--set a.b=value`) and path expansion (`${KAIZEN_CACHE}`, `~/`) for
//! job files.

use std::path::{Path, PathBuf};

/// The kaizen cache directory: `$KAIZEN_CACHE`, else `~/.cache/kaizen`.
pub fn kaizen_cache() -> PathBuf {
    std::env::var_os("KAIZEN_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/kaizen")))
        .unwrap_or_else(|| PathBuf::from(".cache/kaizen"))
}

/// Expands `${KAIZEN_CACHE}` and a leading `~/` in a string (environment parameters name data
/// files under the cache that `scripts/data/` fills).
pub fn expand_path(value: &str) -> String {
    let mut out = value.replace("${KAIZEN_CACHE}", &kaizen_cache().display().to_string());
    if let Some(rest) = out.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        out = Path::new(&home).join(rest).display().to_string();
    }
    out
}

pub(super) fn expand_table(table: &mut toml::Table) {
    for (_, value) in table.iter_mut() {
        match value {
            toml::Value::String(s) => *s = expand_path(s),
            toml::Value::Table(t) => expand_table(t),
            _ => {}
        }
    }
}

/// Applies `a.b.c=value` to a TOML table; `value` is parsed as TOML (`1e-5`, `true`,
/// `"text"`, `[1, 2]`) and taken as a plain string when it does not parse.
pub(super) fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), String> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| format!("`{assignment}`: expected key.path=value"))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(format!("`{assignment}`: empty key"));
    }
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = match entry {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) if items.len() == 1 => match items.first_mut() {
                Some(toml::Value::Table(t)) => t,
                _ => return Err(format!("`{key}`: `{part}` is not a table")),
            },
            toml::Value::Array(_) => {
                return Err(format!(
                    "`{key}`: `{part}` is an array of several tables; `--set` reaches only a single [[{part}]]"
                ));
            }
            _ => return Err(format!("`{key}`: `{part}` is not a table")),
        };
    }
    node.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
