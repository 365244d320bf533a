pub mod outcome;
pub mod pager;
pub mod process;
pub mod report;
pub mod retry;
pub mod schedule;
pub mod worker;
