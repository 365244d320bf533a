pub mod http;
pub mod orders;
pub mod outage;
pub mod resolve;
pub mod stock;
