//! The docs stay true to the binary: every `--flag` and every variable that README.md
//! and docs/*.md name exists in the real binary's `--help` (the worker's or
//! `healthcheck`'s), or is a known OpenTelemetry, standard or test variable, or a flag
//! of another tool listed below; and every flag and variable `--help` shows is in the
//! README's configuration table.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

/// Flags of other tools that the docs use in their commands (cargo, docker, unshare,
/// the local stack example, ...). A flag added to the docs that is none of these and
/// not the worker's fails the test.
const OTHER_TOOLS_FLAGS: &[&str] = &[
    "--release",
    "--example",
    "--test",
    "--nocapture",
    "--profile",
    "--rm",
    "--name",
    "--pid",
    "--fork",
    "--no-default-features",
    "--path",
    "--target",
    "--locked",
    "--all-targets",
    "--check",
    "--bench",
    // examples/local_stack.rs
    "--orders",
    "--order-port",
    "--stock-port",
];

/// OpenTelemetry SDK variables the docs may name (the specification's, as the SDK and
/// src/telemetry read them); `OTEL_BSP` and `OTEL_BLRP` stand for their families.
const OTEL: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_PROPAGATORS",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_TRACES_SAMPLER",
    "OTEL_BSP",
    "OTEL_BLRP",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BLRP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE",
];

/// Other upper-case names with an underscore that the docs use and that are not the
/// worker's settings: variables of Rust, cargo, the tests and the bench, C constants and
/// HTTP/2 error codes.
const OTHER_NAMES: &[&str] = &[
    "RUST_LOG",
    "CARGO_TARGET_DIR",
    "ORDERMANAGEMENT_IMAGE_TEST",
    "CHAOS_ORDERS",
    "CHAOS_KILLS",
    "DRAIN_BENCH_BIN",
    "DRAIN_BENCH_ONLY",
    "DRAIN_BENCH_ROUNDS",
    "ENHANCE_YOUR_CALM",
    "TCP_NODELAY",
    "DT_RELR",
    "O_CREAT",
    "O_EXCL",
    "O_NOFOLLOW",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every docs/*.md, with their names.
fn docs() -> Vec<(String, String)> {
    let mut files = vec![root().join("README.md")];
    let mut pages: Vec<_> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable");
            (p.strip_prefix(root()).unwrap().display().to_string(), text)
        })
        .collect()
}

/// The help of the worker and of each command, unwrapped by a wide terminal.
fn help() -> String {
    let mut all = String::new();
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["healthcheck", "--help"],
    ] {
        let out = common::worker_command()
            .env("COLUMNS", "1000")
            .args(args)
            .output()
            .expect("the binary runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

fn flags(text: &str) -> BTreeSet<String> {
    Regex::new(r"(?:^|[^\w-])(--[a-z][a-z0-9-]*)")
        .unwrap()
        .captures_iter(text)
        .map(|c| c[1].to_string())
        .collect()
}

/// Upper-case names with at least one underscore (`API_URL_ORDERS`, `O_CREAT`).
fn names(text: &str) -> BTreeSet<String> {
    Regex::new(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// The variables `--help` shows: `[env: NAME]` of each option, and the OTEL list.
fn help_variables(help: &str) -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = Regex::new(r"\[env:\s+([A-Z0-9_]+)")
        .unwrap()
        .captures_iter(help)
        .map(|c| c[1].to_string())
        .collect();
    vars.extend(names(help).into_iter().filter(|n| n.starts_with("OTEL_")));
    vars
}

/// The README's configuration table: the rows between `## Configuration` and the next
/// heading.
fn configuration_table(readme: &str) -> String {
    let start = readme
        .find("\n## Configuration\n")
        .expect("README has a Configuration section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_flag_and_variable_the_docs_name_exists() {
    let help = help();
    let help_flags = flags(&help);
    let help_names = names(&help);
    let mut wrong = Vec::new();
    for (file, text) in docs() {
        for flag in flags(&text) {
            if !help_flags.contains(&flag) && !OTHER_TOOLS_FLAGS.contains(&flag.as_str()) {
                wrong.push(format!("{file}: {flag} is in no --help"));
            }
        }
        for name in names(&text) {
            let known = help_names.contains(&name)
                || OTEL.contains(&name.as_str())
                || OTHER_NAMES.contains(&name.as_str());
            if !known {
                wrong.push(format!(
                    "{file}: {name} is in no --help and is no known variable"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_flag_and_variable_of_help_is_in_the_readme_configuration_table() {
    let help = help();
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let table = configuration_table(&readme);
    let mut missing = Vec::new();
    for var in help_variables(&help) {
        if !table.contains(&format!("`{var}`")) {
            missing.push(var);
        }
    }
    for flag in flags(&help) {
        if ["--help", "--version"].contains(&flag.as_str()) {
            continue;
        }
        if !table.contains(&format!("`{flag}`")) {
            missing.push(flag);
        }
    }
    assert!(
        missing.is_empty(),
        "not in README's configuration table: {missing:?}"
    );
}

#[test]
fn the_checks_see_what_they_check() {
    // A guard against a test that passes by finding nothing.
    let help = help();
    assert!(help_variables(&help).contains("API_URL_ORDERS"));
    assert!(help_variables(&help).contains("HEALTHCHECK_MAX_AGE_SECONDS"));
    assert!(help_variables(&help).contains("OTEL_EXPORTER_OTLP_ENDPOINT"));
    assert!(flags(&help).contains("--max-cut-off"));
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    assert!(configuration_table(&readme).lines().count() > 20);
    assert!(flags("run `--made-up` and `cargo --release`").contains("--made-up"));
    assert!(names("set `API_URL_ORDERS=x`").contains("API_URL_ORDERS"));
}

/// The anchors a Markdown file's headings make, as GitHub spells them.
fn anchors(text: &str) -> BTreeSet<String> {
    let fences = Regex::new(r"(?s)```.*?```").unwrap();
    let text = fences.replace_all(text, "");
    text.lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix(' ')
                .filter(|_| l.starts_with('#'))
        })
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// Every Markdown page of the repository's docs: README.md, CONTRIBUTING.md,
/// docs/*.md, the deploy folders' READMEs and the grpc-unary crate's, with their names.
fn pages() -> Vec<(String, String)> {
    let mut all = docs();
    for page in [
        "CONTRIBUTING.md",
        "deploy/grafana/README.md",
        "deploy/kubernetes/README.md",
        "crates/grpc-unary/README.md",
    ] {
        let text =
            std::fs::read_to_string(root().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        all.push((page.to_string(), text));
    }
    all
}

#[test]
fn every_link_between_the_docs_leads_somewhere_inside_the_repository() {
    let link = Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let repository = root().canonicalize().expect("the repository");
    let mut broken = Vec::new();
    for (page, text) in pages() {
        let path = root().join(&page);
        for c in link.captures_iter(&text) {
            let target = &c[1];
            if target.starts_with("http") {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if file.is_empty() {
                path.clone()
            } else {
                path.parent().unwrap().join(file)
            };
            match file.canonicalize() {
                Err(_) => broken.push(format!("{page}: {target}: no such file")),
                Ok(found) if !found.starts_with(&repository) => {
                    broken.push(format!("{page}: {target}: outside the repository"))
                }
                Ok(_) if !anchor.is_empty() => {
                    let text = std::fs::read_to_string(&file).unwrap_or_default();
                    if !anchors(&text).contains(anchor) {
                        broken.push(format!("{page}: {target}: no such heading"));
                    }
                }
                Ok(_) => {}
            }
        }
        // The docs stand alone: nothing that lives beside the repository is named.
        if text.contains("../shared") || text.contains("api-contract") {
            broken.push(format!("{page}: names a file outside the repository"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The most words README.md and docs/*.md may hold together, counted as `wc -w` does.
const WORD_BUDGET: usize = 9_000;

/// The most words one paragraph may hold.
const PARAGRAPH_WORDS: usize = 120;

fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

#[test]
fn the_readme_and_docs_stay_within_their_word_budget() {
    let counts: Vec<(String, usize)> = docs().into_iter().map(|(f, t)| (f, words(&t))).collect();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    assert!(
        total <= WORD_BUDGET,
        "{total} words, over the budget of {WORD_BUDGET}: {counts:?}"
    );
}

/// The paragraphs of a Markdown text: runs of lines between blank lines, each list
/// item apart, leaving out fenced code blocks, tables and headings.
fn paragraphs(text: &str) -> Vec<String> {
    let item = Regex::new(r"^\s*(?:[-*]|\d+\.)\s").unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut fenced = false;
    let flush = |current: &mut String, out: &mut Vec<String>| {
        if !current.trim().is_empty() {
            out.push(std::mem::take(current));
        }
        current.clear();
    };
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            flush(&mut current, &mut out);
            continue;
        }
        let blank = line.trim().is_empty();
        let skipped = fenced || line.trim_start().starts_with('|') || line.starts_with('#');
        if blank || skipped || item.is_match(line) {
            flush(&mut current, &mut out);
        }
        if !blank && !skipped {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current, &mut out);
    out
}

#[test]
fn no_paragraph_is_over_120_words() {
    let mut long = Vec::new();
    for (page, text) in pages() {
        for p in paragraphs(&text) {
            let n = words(&p);
            if n > PARAGRAPH_WORDS {
                let start: String = p.chars().take(80).collect();
                long.push(format!("{page}: {n} words: {start}…"));
            }
        }
    }
    assert!(long.is_empty(), "{}", long.join("\n"));
}

/// Words that look like commit hashes: 40 hex digits, or 7 to 12 with both a digit and
/// a letter (a plain number is not one).
fn hashes(text: &str) -> Vec<String> {
    Regex::new(r"\b(?:[0-9a-f]{40}|[0-9a-f]{7,12})\b")
        .unwrap()
        .find_iter(text)
        .map(|m| m.as_str())
        .filter(|h| {
            h.len() == 40
                || (h.chars().any(|c| c.is_ascii_digit())
                    && h.chars().any(|c| c.is_ascii_alphabetic()))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn no_page_names_a_commit() {
    let mut found = Vec::new();
    for (page, text) in pages() {
        for h in hashes(&text) {
            found.push(format!("{page}: {h}"));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_prose_checks_see_what_they_check() {
    let text = "# Title\n\nOne two three.\n\n```\ncode code\n```\n\n| a | b |\n|---|---|\n\n- one\n- two\n  three\n";
    assert_eq!(
        paragraphs(text),
        ["One two three.\n", "- one\n", "- two\n  three\n"]
    );
    assert_eq!(
        hashes("built at bec6e4b, not 4294967295 or deadline"),
        ["bec6e4b"]
    );
    assert_eq!(hashes(&"a1".repeat(20)).len(), 1);
    assert!(words(&"word ".repeat(121)) > PARAGRAPH_WORDS);
    assert!(pages().len() >= 8);
}
