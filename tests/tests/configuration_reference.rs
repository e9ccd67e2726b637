//! docs/configuration.md lists exactly the flags and environment variables the binaries take,
//! each under the right binary: every `--flag` and `[env: NAME=]` that `ferrolb-controller`,
//! `ferrolb-controller status`, `ferrolb-speaker`, `ferrolb-speaker run` and
//! `ferrolb-speaker announce` print with `--help` appears in that binary's section, and every
//! `--flag` and `FERROLB_*` variable a section names is one its binary prints.
//!
//! Needs `ferrolb-controller` and `ferrolb-speaker` built beside this test
//! (`cargo build -p ferrolb-controller -p ferrolb-speaker`; scripts/test does it). No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a failed unwrap is a failed test.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const REFERENCE: &str = "docs/configuration.md";
const CONTROLLER_SECTION: &str = "## ferrolb-controller: flags and environment";
const SPEAKER_SECTION: &str = "## ferrolb-speaker: flags and environment";

/// What one binary's help pages declare.
#[derive(Debug, Default)]
struct Declared {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

/// The long flags (`--name`) of the option lines of a clap help page, and its `[env: NAME=]`
/// variables. `--help` and `--version` are everywhere and need no row.
fn parse_help(help: &str, into: &mut Declared) {
    for line in help.lines() {
        let trimmed = line.trim_start();
        let option = trimmed.strip_prefix("--").or_else(|| {
            // `-i, --interface <INTERFACES>`
            let rest = trimmed.strip_prefix('-')?;
            let (_short, long) = rest.split_once(", --")?;
            Some(long)
        });
        if let Some(option) = option {
            let name: String = option
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() && name != "help" && name != "version" {
                into.flags.insert(format!("--{name}"));
            }
        }
        let mut rest = line;
        while let Some(start) = rest.find("[env: ") {
            let after = &rest[start + "[env: ".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                into.env.insert(name);
            }
            rest = after;
        }
    }
}

/// The text of `heading`'s section of the reference, up to the next `## ` heading.
fn section<'a>(reference: &'a str, heading: &str) -> &'a str {
    let start = reference
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{REFERENCE} has no heading `{heading}`"));
    let body = &reference[start + heading.len() + 2..];
    let end = body.find("\n## ").unwrap_or(body.len());
    &body[..end]
}

/// Every `--flag` written in backticks in `text` (`` `--state-dir DIR` `` gives `--state-dir`).
fn documented_flags(text: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("`--") {
        let after = &rest[start + 3..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !name.is_empty() {
            flags.insert(format!("--{name}"));
        }
        rest = after;
    }
    flags
}

/// Every `FERROLB_*` name written in backticks in `text`.
fn documented_env(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("`FERROLB_") {
        let after = &rest[start + 1..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name);
        rest = after;
    }
    names
}

/// What `binary` declares over the help pages of these argument lists.
fn declared(binary: &str, pages: &[&[&str]]) -> Declared {
    let path = ferrolb_e2e::install::binary(binary).unwrap_or_else(|e| panic!("{e}"));
    let mut declared = Declared::default();
    for args in pages {
        let out = Command::new(&path)
            .args(*args)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("running {} {args:?} --help: {e}", path.display()));
        assert!(
            out.status.success(),
            "{} {args:?} --help failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut page = Declared::default();
        parse_help(&String::from_utf8_lossy(&out.stdout), &mut page);
        // The parser must find something on every page, or "all documented" proves nothing.
        assert!(
            !page.flags.is_empty() && !page.env.is_empty(),
            "no flags or variables read from `{binary} {args:?} --help`: the help format changed?"
        );
        declared.flags.extend(page.flags);
        declared.env.extend(page.env);
    }
    declared
}

/// Compares one binary's declarations with its section; returns the problems.
fn compare(binary: &str, declared: &Declared, text: &str, problems: &mut Vec<String>) {
    let flags = documented_flags(text);
    let env = documented_env(text);
    for flag in declared.flags.difference(&flags) {
        problems.push(format!(
            "`{binary} --help` prints {flag}, which {REFERENCE} does not list under {binary}"
        ));
    }
    for flag in flags.difference(&declared.flags) {
        problems.push(format!(
            "{REFERENCE} lists {flag} under {binary}, which `{binary} --help` does not print"
        ));
    }
    for name in &declared.env {
        if !text.contains(&format!("`{name}`")) {
            problems.push(format!(
                "`{binary} --help` reads the environment variable {name}, which {REFERENCE} does not name under {binary}"
            ));
        }
    }
    for name in env.difference(&declared.env) {
        problems.push(format!(
            "{REFERENCE} names {name} under {binary}, which `{binary} --help` does not read"
        ));
    }
}

#[test]
fn every_flag_is_documented_under_its_binary_and_nothing_else_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reference = std::fs::read_to_string(root.join(REFERENCE)).expect(REFERENCE);

    let controller = declared("ferrolb-controller", &[&[], &["status"]]);
    let speaker = declared("ferrolb-speaker", &[&[], &["run"], &["announce"]]);
    // Anchors: flags each binary certainly has, so a parser that reads the wrong thing fails.
    for (declared, anchors) in [
        (
            &controller,
            &["--state-dir", "--metrics-addr", "--lease-name"][..],
        ),
        (
            &speaker,
            &["--node-name", "--ip", "--interface", "--log-level"][..],
        ),
    ] {
        for anchor in anchors {
            assert!(
                declared.flags.contains(*anchor),
                "{anchor} not read from the help pages: {:?}",
                declared.flags
            );
        }
    }

    let mut problems = Vec::new();
    compare(
        "ferrolb-controller",
        &controller,
        section(&reference, CONTROLLER_SECTION),
        &mut problems,
    );
    compare(
        "ferrolb-speaker",
        &speaker,
        section(&reference, SPEAKER_SECTION),
        &mut problems,
    );
    println!(
        "{} controller flags, {} speaker flags, all in {REFERENCE}",
        controller.flags.len(),
        speaker.flags.len()
    );
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_parsers_see_what_they_should() {
    let mut declared = Declared::default();
    parse_help(
        "Options:\n      --state-dir <DIR>        Read this [env: FERROLB_STATE_DIR=]\n  \
         -i, --interface <INTERFACES>\n      --probe\n  -h, --help\n  -V, --version\n",
        &mut declared,
    );
    let flags: Vec<&str> = declared.flags.iter().map(String::as_str).collect();
    assert_eq!(flags, ["--interface", "--probe", "--state-dir"]);
    assert!(declared.env.contains("FERROLB_STATE_DIR"));

    let text =
        "| `--state-dir DIR` | `FERROLB_STATE_DIR` |\n`--pod-name`, `--pod-uid`; see `--set x`";
    let flags = documented_flags(text);
    assert!(flags.contains("--state-dir") && flags.contains("--pod-uid"));
    assert!(documented_env(text).contains("FERROLB_STATE_DIR"));

    let reference = "x\n## a\none `--a`\n## b\ntwo `--b`\n";
    assert_eq!(documented_flags(section(reference, "## a")).len(), 1);
    assert!(documented_flags(section(reference, "## b")).contains("--b"));
}
