//! The order-management worker of the wood-shop demo.
//!
//! It pages through the Order Service's `registered` orders, decreases the Stock
//! Service's stock for each, and sets the order `ready`, `blocked` or `unknown`; see
//! README.md for the outcomes, timeouts and exit codes.

pub mod cli;
pub mod config;
pub mod exit;
pub mod files;
pub mod heartbeat;
pub mod http;
pub mod journal;
pub mod logging;
pub mod orders;
pub mod outcome;
pub mod pager;
pub mod process;
pub mod redact;
pub mod report;
pub mod resolve;
pub mod retry;
pub mod schedule;
pub mod startup;
pub mod stock;
pub mod stop;
pub mod telemetry;
pub mod worker;

pub use config::{Config, ConfigError, HealthcheckConfig, Invocation, Mode, Shard};
pub use orders::{Order, OrderStatus, WoodType};
pub use outcome::Outcome;
pub use process::{InFlight, Journal, NoJournal};
pub use stop::Stop;
pub use worker::{CycleReport, Worker};
