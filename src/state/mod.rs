pub mod files;
pub mod heartbeat;
pub mod in_flight;
pub mod journal;
