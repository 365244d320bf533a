//! The binary only wires: the command line, start-up, `run` or `once`, what is left
//! said, the exit code. Each step lives in `ordermanagement::startup`.

// No input can panic the process (a peer's bytes, a file's, a setting's): outside
// tests a panic is an abort (`panic = "abort"`) that cuts the order in flight short.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::process::ExitCode;

use ordermanagement::startup;
use ordermanagement::{Invocation, Mode};

fn main() -> ExitCode {
    let (mode, config) = match startup::command_line() {
        Ok(Invocation::Work(mode, config)) => (mode, config),
        Ok(Invocation::Healthcheck(check)) => return startup::healthcheck(&check).into(),
        Err(exit) => return exit.into(),
    };
    let mut started = match startup::start(&mode, &config) {
        Ok(started) => started,
        Err(exit) => return exit.into(),
    };
    let exit = match mode {
        Mode::Run { interval } => started.run(interval),
        Mode::Once => started.once(),
    };
    started.finish(exit);
    exit.into()
}
