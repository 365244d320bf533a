//! The exit codes, next to the text `--help` shows for them (README.md, "Exit codes",
//! says the same at length). Every way the process ends goes through [`Exit`].

/// Exit codes, as `--help` lists them after each command's options.
pub const HELP: &str = "\
Exit codes:
  0  done: the cycle completed and every fetched order reached a final state
     (run: stopped by SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2)
  1  work left: the order list could not be fetched, or orders were left
     registered for a later cycle (a transient failure, bad data, a wrong URL,
     out of resources), or status updates are pending or were refused (the
     orders are named in one error line)
  2  usage or configuration error (nothing was sent)
  3  another run holds the state file (--state-file): nothing was done
  128 + N  a second stop signal N cut a stop short (143 SIGTERM, 130 SIGINT,
     129 SIGHUP, 131 SIGQUIT, 138 SIGUSR1, 140 SIGUSR2)";

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exit 0: `once`: every fetched order reached a final state, or there was nothing to
    /// do; `run`: stopped by a signal; `healthcheck`: the worker makes progress;
    /// `--help`, `--version`.
    Success,
    /// Exit 1: `once`: work is left: the order list could not be fetched, orders stay
    /// `registered`, or status updates are pending or were refused.
    WorkLeft,
    /// Exit 1: `healthcheck`: the worker makes no progress or has ended (or its heartbeat
    /// cannot be read).
    Unhealthy,
    /// Exit 2: a usage or configuration error, or a start-up that failed (a state file
    /// damaged or in use, a heartbeat file refused, the signal handlers not installed):
    /// nothing was sent.
    Usage,
    /// Exit 3: another process holds the state file's lock (an overlapping cron run):
    /// nothing was done. Not a configuration error: the next run goes ahead.
    Busy,
    /// Exit 128 + N: a second stop signal N cut a stop short (the signal handler exits with it).
    SecondSignal(i32),
}

impl Exit {
    /// The process's exit status.
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::WorkLeft | Exit::Unhealthy => 1,
            Exit::Usage => 2,
            Exit::Busy => 3,
            Exit::SecondSignal(signal) => 128 + signal,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        // Every code is within 0..=255: signals are numbered below 128.
        std::process::ExitCode::from(u8::try_from(exit.code()).unwrap_or(u8::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codes_are_the_documented_ones() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::WorkLeft.code(), 1);
        assert_eq!(Exit::Unhealthy.code(), 1);
        assert_eq!(Exit::Usage.code(), 2);
        assert_eq!(Exit::Busy.code(), 3);
        assert_eq!(Exit::SecondSignal(libc::SIGTERM).code(), 143);
        assert_eq!(Exit::SecondSignal(libc::SIGINT).code(), 130);
        assert_eq!(Exit::SecondSignal(libc::SIGHUP).code(), 129);
        assert_eq!(Exit::SecondSignal(libc::SIGQUIT).code(), 131);
    }

    #[test]
    fn the_help_names_every_code() {
        for code in [Exit::Success, Exit::WorkLeft, Exit::Usage, Exit::Busy] {
            assert!(
                HELP.contains(&format!("\n  {}  ", code.code())),
                "{code:?} missing from:\n{HELP}"
            );
        }
        assert!(HELP.contains("128 + N"));
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT] {
            let code = Exit::SecondSignal(signal).code();
            assert!(HELP.contains(&code.to_string()), "{code} missing");
        }
    }
}
