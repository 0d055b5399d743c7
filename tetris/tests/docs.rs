//! The documents keep up with the programs: `assets/` holds what the README's layout table
//! says it holds, the manual names every option `tetris --help` lists, the harness's manual
//! every subcommand, and the demo script plays as the README's `run` example plays it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the tetris crate")
        .to_owned()
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn assets_hold_what_the_readme_layout_table_lists() {
    let readme = read("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `assets/` |"))
        .expect("an assets row in the layout table");
    // The code spans after `assets/` that name files (the others name commands).
    let named: Vec<&str> = row
        .split('`')
        .skip(3)
        .step_by(2)
        .filter(|span| span.contains('.'))
        .collect();
    assert!(!named.is_empty(), "{row}");
    for file in &named {
        assert!(
            root().join("assets").join(file).is_file(),
            "{file} of {row}"
        );
    }
    let mut present: Vec<String> = std::fs::read_dir(root().join("assets"))
        .expect("assets/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    present.sort();
    let mut listed: Vec<String> = named.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(
        present, listed,
        "assets/ holds what the README lists, no more"
    );
}

#[test]
fn the_manual_names_every_long_option_of_the_help() {
    let out = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .arg("--help")
        .output()
        .expect("tetris --help");
    let help = String::from_utf8_lossy(&out.stdout);
    // roff writes a dash in an option as `\-`.
    let manual = read("assets/tetris.6").replace("\\-", "-");
    let mut options: Vec<&str> = help
        .split(|c: char| c.is_whitespace() || "[]|,".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| {
            let end = w[2..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .map_or(w.len(), |i| i + 2);
            &w[..end]
        })
        .collect();
    options.sort_unstable();
    options.dedup();
    assert!(options.len() >= 9, "{options:?}");
    for option in options {
        assert!(manual.contains(&format!("Fl {}", &option[1..])), "{option}");
    }
}

#[test]
fn the_harness_manual_documents_every_subcommand() {
    let cli = read("failover-harness/src/cli.rs");
    let manual = read("assets/failover-harness.1");
    // The subcommands are the variants of `enum Command`, spelt in kebab case.
    let body = cli
        .split("pub enum Command {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("enum Command in the harness's cli.rs");
    let mut found = 0;
    for line in body.lines().map(str::trim) {
        let Some(name) = line
            .split(['(', ' ', '{', ','])
            .next()
            .filter(|n| n.chars().next().is_some_and(char::is_uppercase))
        else {
            continue;
        };
        let mut kebab = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                kebab.push('-');
            }
            kebab.push(c.to_ascii_lowercase());
        }
        assert!(manual.contains(&format!(".It Cm {kebab}")), "{kebab}");
        found += 1;
    }
    assert_eq!(
        found, 8,
        "play, run, axe, status, bench-failover, agent, client, game"
    );
}

#[test]
fn the_demo_script_plays_the_readme_run_example_to_its_quit() {
    let out = Command::new(env!("CARGO_BIN_EXE_tetris"))
        .args(["--headless", "--seed", "7", "--script"])
        .arg(root().join("assets/demo.script"))
        .output()
        .expect("tetris --headless");
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(line.contains("\"quit\":true"), "{line}");
    let readme = read("README.md");
    let script = std::fs::read(root().join("assets/demo.script")).expect("demo.script");
    let text = String::from_utf8_lossy(&script);
    let quoted = text.trim_end().replace('\n', "\\n");
    assert!(readme.contains(&format!("printf '{quoted}'")), "{quoted}");
}
