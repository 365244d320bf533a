//! gRPC unary calls, synchronous, without an async runtime: one call at a time on a
//! connection kept open, on the caller's thread, over a small HTTP/2 client (RFC 9113)
//! with its own HPACK decoder (RFC 7541), hardened against what a hostile server sends.
//!
//! ```no_run
//! use std::time::Duration;
//! use grpc_unary::{Call, Client, Secrets, Target};
//!
//! let client = Client::new(Target::parse("http://collector:4317")?, None)?;
//! let mut secrets = Secrets::default();
//! secrets.add(b"Bearer s3cret");
//! let reply = client.call(&Call {
//!     path: "/package.Service/Method",
//!     metadata: &[("authorization", b"Bearer s3cret")],
//!     message: b"",
//!     encoding: None,
//!     timeout: Duration::from_secs(10),
//!     secrets: &secrets,
//! })?;
//! println!("{} {}", grpc_unary::code_name(reply.code), reply.message);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What a call does, and what it refuses, is in the crate's README. Nothing a server
//! sends can panic: unwrap, expect, panic and unchecked indexing are denied outside
//! the tests.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::io;
use std::time::Duration;

mod client;
#[doc(hidden)]
pub mod fuzz;
mod h2;
mod reply;
mod scrub;
mod tls;

pub use client::{BACKOFF_FIRST, BACKOFF_MAX, CONNECT_TIMEOUT, Call, Client, Target, reserved};
pub use h2::{FRAME_BUDGET, MAX_BODY, MAX_CONTINUATIONS, MAX_HEADER_LIST};
pub use reply::{Reply, code_name};
pub use scrub::{MAX_PEER_TEXT, REDACTED, Redaction, Secrets};
pub use tls::TlsConfig;

/// Why a call got no reply.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The socket failed or closed, the name lookup failed, or the deadline passed.
    Io(io::Error),
    /// The server broke the HTTP/2 protocol; the connection is closed (GOAWAY
    /// PROTOCOL_ERROR).
    Protocol(&'static str),
    /// A header block that is not valid HPACK; the connection is closed (GOAWAY
    /// COMPRESSION_ERROR: the decoder's table can no longer be trusted).
    Compression(&'static str),
    /// The server went over a budget (frames that carry no reply, CONTINUATION
    /// frames, the header list size); the connection is closed (GOAWAY
    /// ENHANCE_YOUR_CALM).
    Calm(&'static str),
    /// The server said GOAWAY before it took the call's stream: it was not processed
    /// (a call is sent once more on a new connection before this is returned).
    Refused { code: u32 },
    /// The server reset the call's stream (RST_STREAM) with this HTTP/2 error code;
    /// the connection stays open.
    Reset(u32),
    /// The reply's body is larger than [`MAX_BODY`]; the connection is closed (GOAWAY
    /// ENHANCE_YOUR_CALM).
    TooLarge,
    /// No new connection yet: the last one was closed for the server's misbehaviour,
    /// and the next may be opened only after this long still (see [`BACKOFF_FIRST`]).
    BackingOff(Duration),
    /// The server answered with an HTTP status other than 200: not a gRPC reply (a
    /// proxy's, say).
    Http(u16),
    /// A 200 reply without a `grpc-status` that reads as a number.
    NoStatus,
}

impl Error {
    /// The server misbehaved, and the connection was closed for it: the next call
    /// waits before it opens a new one.
    pub fn misbehaved(&self) -> bool {
        matches!(
            self,
            Error::Protocol(_) | Error::Compression(_) | Error::Calm(_) | Error::TooLarge
        )
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => f.write_str("timed out"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Protocol(what) => write!(f, "HTTP/2 protocol error: {what}"),
            Error::Compression(what) => write!(f, "HTTP/2 header block refused: {what}"),
            Error::Calm(what) => write!(
                f,
                "HTTP/2 peer over its budget: {what}; connection closed (ENHANCE_YOUR_CALM)"
            ),
            Error::Refused { code } => {
                write!(
                    f,
                    "connection going away (GOAWAY code {code}) before the request"
                )
            }
            Error::Reset(code) => write!(f, "stream reset by the peer (RST_STREAM code {code})"),
            Error::TooLarge => write!(
                f,
                "a reply body larger than {MAX_BODY} bytes; connection closed (ENHANCE_YOUR_CALM)"
            ),
            Error::BackingOff(left) => write!(
                f,
                "not connecting again for {} ms: the last connection was closed for the \
                 server's misbehaviour",
                left.as_millis()
            ),
            Error::Http(status) => write!(f, "HTTP {status}, not a gRPC reply"),
            Error::NoStatus => f.write_str("a reply without grpc-status"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
    }
}
