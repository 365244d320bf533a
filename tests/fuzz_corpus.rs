//! The fuzzer's seed corpus and every crash it found (`tests/fuzz/corpus`,
//! `tests/fuzz/regressions`), replayed through the same entry points on stable: none
//! may panic. `.ci/fuzz` runs the fuzzer itself where a nightly toolchain is installed.

use std::path::Path;

/// A fuzz target's entry point.
type Target = fn(&[u8]);

/// The fuzz targets, by the name of their folders.
const TARGETS: [(&str, Target); 6] = [
    ("order_list", ordermanagement::fuzz::order_list),
    ("journal_replay", ordermanagement::fuzz::journal_replay),
    ("settings", ordermanagement::fuzz::settings),
    ("h2_client", grpc_unary::fuzz::h2_client),
    ("hpack", grpc_unary::fuzz::hpack),
    ("grpc_reply", grpc_unary::fuzz::grpc_reply),
];

/// Runs every input under `tests/fuzz/<kind>/<target>`; the count run.
fn replay(kind: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(kind);
    let mut ran = 0;
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if !path.is_file() || path.file_name().is_some_and(|n| n == "README.md") {
                continue;
            }
            let bytes = std::fs::read(&path).expect("read a corpus entry");
            target(&bytes);
            ran += 1;
        }
    }
    ran
}

#[test]
fn the_seed_corpus_runs_through_every_target() {
    let ran = replay("corpus");
    assert!(ran >= 20, "only {ran} seed inputs found");
}

#[test]
fn every_crash_the_fuzzer_found_stays_fixed() {
    replay("regressions");
}

#[test]
fn the_entry_points_read_what_they_are_given() {
    // Not only "no panic": the list scanner and the replay find what is there.
    let page = ordermanagement::services::orders::read_list_body(
        br#"[{"id": 17, "wood_type": "oak", "quantity": 3, "order_status": "registered"}, 5]"#,
        10,
    );
    assert!(page.is_err(), "a non-object entry refuses the page");
    let page = ordermanagement::services::orders::read_list_body(
        br#" [{"id": 17, "wood_type": "oak", "quantity": 3, "order_status": "registered"}, {"id": 0}] "#,
        10,
    )
    .expect("a page");
    assert_eq!(page.entries().len(), 2);
    assert!(page.entries()[0].is_ok() && page.entries()[1].is_err());
    let orders = ordermanagement::state::journal::replay_bytes(
        b"{\"op\":\"sending\",\"id\":1,\"wood_type\":\"oak\",\"quantity\":3}\n",
    )
    .expect("replayed");
    assert_eq!(orders.len(), 1);
}
