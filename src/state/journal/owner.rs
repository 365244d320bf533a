//! What a state file belongs to ([`Owner`]: both services and the shard), and the line
//! that records it first in the file.

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a state file belongs to: both services' base URLs (credentials left out) and
/// the shard. Written as the file's first line; a worker for other services or another
/// shard refuses the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub orders: String,
    pub stocks: String,
    pub shard: Option<String>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "orders {}, stocks {}", self.orders, self.stocks)?;
        match &self.shard {
            Some(shard) => write!(f, ", shard {shard}"),
            None => f.write_str(", no shard"),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum OwnerOp {
    Owner,
}

/// The owner's line (its fields spelled out: serde's `flatten` costs kilobytes of code).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct OwnerLine {
    pub(super) op: OwnerOp,
    pub(super) orders: String,
    pub(super) stocks: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) shard: Option<String>,
}
