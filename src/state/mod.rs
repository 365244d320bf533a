//! The state on disk: the state file ([`journal`]), which keeps the orders in flight
//! across a crash, with the [`in_flight::Journal`] trait the cycle tells before each
//! step; the heartbeat file and the `healthcheck` verdict on it ([`heartbeat`]); and
//! the safe ways those files are opened ([`files`]: no symbolic link followed, no FIFO
//! blocked on).
//!
//! It may import the order types of [`crate::services::orders`] and, from the root,
//! [`crate::logging`]'s timestamps; nothing of the cycle: the cycle hands the heartbeat
//! its counts ([`heartbeat::CycleBeat`]). The cycle ([`crate::cycle`]), start-up
//! ([`crate::startup`]) and the fuzz entry points import it.

pub mod files;
pub mod heartbeat;
pub mod in_flight;
pub mod journal;
#[cfg(test)]
mod testing;
