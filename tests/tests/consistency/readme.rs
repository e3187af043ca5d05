//! README.md's option table ("key / option | default | meaning") against the command line: the
//! same keys, and each default as `--help` shows it (both come from `config::defaults`).

use std::collections::BTreeMap;

use vsock_plugin::config::vm_args;

fn readme() -> String {
    let path = super::root().join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The table's rows as key → default. A row may name two keys (`a` / `b`) with two defaults
/// (`1 / 2`); `–` is "no default"; backticks and a parenthesised note are not part of the value.
fn option_table(text: &str) -> BTreeMap<String, Option<String>> {
    let mut rows = BTreeMap::new();
    let table = text
        .lines()
        .skip_while(|l| !l.starts_with("| key / option | default |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    for line in table {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (keys, defaults) = (cells[1], cells[2]);
        let keys: Vec<&str> = keys.split(" / ").collect();
        let defaults: Vec<&str> = defaults.split(" / ").collect();
        assert_eq!(
            keys.len(),
            defaults.len(),
            "README row {line:?}: keys vs defaults"
        );
        for (k, d) in keys.iter().zip(defaults) {
            let d = d.split(" (").next().unwrap_or(d).trim_matches('`');
            let d = (d != "–" && d != "-").then(|| d.to_string());
            rows.insert(k.trim_matches('`').to_string(), d);
        }
    }
    rows
}

#[test]
fn readme_option_table_matches_the_command_line() {
    let table = option_table(&readme());
    let code: BTreeMap<String, Option<String>> = vm_args::key_defaults().into_iter().collect();
    assert!(!table.is_empty(), "README.md has no option table");
    assert_eq!(
        table, code,
        "README.md's option table (left) vs the command line's keys and defaults (right)"
    );
}

#[test]
fn table_parser_reads_what_it_must() {
    let t = option_table(
        "x\n| key / option | default | meaning |\n|---|---|---|\n\
         | `a` | 3 (note) | m |\n| `b` / `c` | 1 / `on` | m |\n| `d` | – | m |\n\nafter\n",
    );
    let want: BTreeMap<String, Option<String>> = [
        ("a", Some("3")),
        ("b", Some("1")),
        ("c", Some("on")),
        ("d", None),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
    .collect();
    assert_eq!(t, want);
}
