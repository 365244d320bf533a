pub mod files;
pub mod heartbeat;
pub mod journal;
