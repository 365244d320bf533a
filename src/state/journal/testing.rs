//! Helpers shared by the tests of the journal's modules: an order, a fresh directory,
//! and the message of a refusal to open.

use std::path::PathBuf;

use super::{FileJournal, JournalError};
use crate::services::orders::{Order, WoodType};

pub(super) fn order(id: u64) -> Order {
    Order {
        id,
        wood_type: WoodType::Elm,
        quantity: 4,
    }
}

pub(super) fn temp_dir(name: &str) -> PathBuf {
    crate::state::testing::temp_dir("journal", name)
}

pub(super) fn unusable(result: Result<FileJournal, JournalError>) -> String {
    match result {
        Err(e @ JournalError::Unusable { .. }) => e.to_string(),
        Err(e) => panic!("expected Unusable, got {e}"),
        Ok(_) => panic!("expected Unusable, got a journal"),
    }
}
