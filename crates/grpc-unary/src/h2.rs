//! A small synchronous HTTP/2 client (RFC 9113) for what an OTLP/gRPC export needs:
//! one request at a time on a connection kept open, on the caller's thread.
//!
//! What it does: the connection preface and SETTINGS (acknowledged both ways); flow
//! control both ways (a body larger than the peer's windows waits for WINDOW_UPDATE,
//! and every DATA frame read is given back at once); PING answered; GOAWAY (a stream
//! the peer did not process is reported as such, so it can be sent again on a new
//! connection; no new stream after it), RST_STREAM, CONTINUATION, padding,
//! informational (1xx) replies skipped, and replies that end in their HEADERS
//! (trailers-only). HPACK: replies are decoded by [`hpack`] (Huffman and the dynamic
//! table); requests are written as literals never indexed, so the peer's table is
//! never used and nothing sent is kept by it.
//!
//! Bounded, whatever the peer sends: every read and write runs against the caller's
//! deadline (socket timeouts set to what is left before each call), so a peer that
//! never answers or trickles bytes costs at most that. Frames larger than 16 KiB, header
//! lists larger than [`MAX_HEADER_LIST`] (decoded, as SETTINGS_MAX_HEADER_LIST_SIZE
//! says) and bodies larger than [`MAX_BODY`] are refused. Frames that carry no reply
//! (PING, SETTINGS, WINDOW_UPDATE, PRIORITY, RST_STREAM or DATA of other streams,
//! unknown types, empty CONTINUATION...) are counted against a budget per request
//! ([`FRAME_BUDGET`]), as are CONTINUATION frames per header block
//! ([`MAX_CONTINUATIONS`]): a peer over either is told ENHANCE_YOUR_CALM and the
//! connection closed ([`Error::Calm`]). Nothing the peer sends can panic: the crate
//! denies unwrap, expect, panic and unchecked indexing outside its tests.
//!
//! Laid out by job: this file holds the connection, its limits, its opening (the
//! preface and the SETTINGS exchange) and its closing (GOAWAY); `frame` reads and
//! writes whole frames by a deadline; `request` sends a request on a new stream;
//! `receive` handles each frame read, the reply's among them; `budget` counts the
//! frames that carry no reply; `hpack` decodes header blocks.

mod budget;
mod frame;
pub mod hpack;
mod receive;
mod request;
#[cfg(test)]
mod testing;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use budget::Budget;
use frame::{Frame, frame_into, left};

pub use crate::Error;
pub use budget::FRAME_BUDGET;

/// The connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload read: our SETTINGS_MAX_FRAME_SIZE, the default.
const MAX_FRAME: usize = 16_384;
/// Our SETTINGS_MAX_HEADER_LIST_SIZE: the largest header list (HEADERS or trailers)
/// accepted, counted decoded as RFC 9113 6.5.2 says (name + value + 32 per field).
/// 16 KiB is gRPC's own hard limit on metadata (grpc-core's, with 8 KiB its soft
/// one), so a gRPC server's replies fit, with room for a long grpc-message or
/// grpc-status-details-bin; and no reply can make the decoder produce more.
pub const MAX_HEADER_LIST: usize = 16 * 1024;
/// The largest header block accepted (HEADERS and its CONTINUATIONs together, as
/// sent). An HPACK representation never takes more bytes than the 32 its field adds
/// to the list size (at most 15: a prefix and two lengths), so a longer block cannot
/// decode to a list within [`MAX_HEADER_LIST`]; 64 bytes more for table size updates.
const MAX_HEADER_BLOCK: usize = MAX_HEADER_LIST + 64;
/// The most CONTINUATION frames one header block may take. A block of
/// [`MAX_HEADER_BLOCK`] needs two frames of 16 KiB; the h2 crate allows a quarter more
/// than a maximal block needs and at least 5 (its answer to the 2024 CONTINUATION
/// floods); 8 leaves room for peers that cut their blocks smaller.
pub const MAX_CONTINUATIONS: usize = 8;
/// The largest response body kept. The reply to an OTLP export is a count and a
/// message (partial success), read only for the exporter's log; gRPC's own default
/// (4 MiB) let a hostile collector take the worker's peak RSS from 12.5 to 16.6 MB.
pub const MAX_BODY: usize = 64 * 1024;
/// The window every stream starts with until the peer's SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// How long closing a connection the peer broke may take: the GOAWAY written, our
/// side of the stream ended, then what the peer still sends read and dropped until it
/// closes too; after [`LINGER_BYTES`] of that, the rest of the time is waited without
/// reading. Closing a socket with unread bytes resets the connection, and the reset
/// discards what the kernel has not sent yet: on a busy machine, the GOAWAY (a flood
/// fills 64 KiB in microseconds; the time is what lets the kernel send it).
const LINGER: Duration = Duration::from_millis(100);
const LINGER_BYTES: usize = 64 * 1024;

// Frame types.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

// Error codes sent.
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// Our SETTINGS: SETTINGS_ENABLE_PUSH 0 and SETTINGS_MAX_HEADER_LIST_SIZE; the others
/// keep their defaults (a header table of 4096 bytes, frames of 16 KiB).
const OUR_SETTINGS: [u8; 12] = {
    let [a, b, c, d] = (MAX_HEADER_LIST as u32).to_be_bytes();
    [0, 0x2, 0, 0, 0, 0, 0, 0x6, a, b, c, d]
};

/// A byte stream whose reads and writes can be bounded in time.
pub trait Io: Read + Write + Send {
    /// Sets the read and write timeouts of the socket underneath.
    fn set_timeout(&self, timeout: Duration) -> io::Result<()>;

    /// Ends our side of the stream (TCP's FIN), reads still possible.
    fn close_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Io for TcpStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }

    fn close_write(&mut self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// The GOAWAY code a connection closed for `error` is closed with.
fn goaway_code(error: &Error) -> Option<u32> {
    match error {
        Error::Protocol(_) => Some(PROTOCOL_ERROR),
        Error::Compression(_) => Some(COMPRESSION_ERROR),
        Error::Calm(_) | Error::TooLarge => Some(ENHANCE_YOUR_CALM),
        _ => None,
    }
}

/// One request.
pub struct Request<'a> {
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    /// Regular header fields (lowercase names), after the pseudo-headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    pub body: &'a [u8],
}

/// A reply: its status (100 to 599, never informational), header fields, body and
/// trailer fields.
#[derive(Debug, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
}

impl Response {
    /// A field's value: from the trailers, or from the headers (a trailers-only reply).
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.trailers
            .iter()
            .chain(&self.headers)
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// One HTTP/2 connection.
pub struct Connection<S: Io> {
    io: S,
    read_buf: Vec<u8>,
    decoder: hpack::Decoder,
    /// The id the next stream opened gets; every odd id below it has been opened.
    next_stream: u32,
    /// The connection's send window.
    send_window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    peer_window: i64,
    peer_max_frame: usize,
    /// GOAWAY received: no new streams.
    going_away: bool,
    /// Broken: the state is unknown after an error.
    broken: bool,
}

impl<S: Io> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("next_stream", &self.next_stream)
            .field("going_away", &self.going_away)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// The state of the one stream open.
struct Stream {
    id: u32,
    send_window: i64,
    response: Option<Response>,
    done: bool,
}

impl<S: Io> Connection<S> {
    /// Sends the preface and our SETTINGS, and waits for the peer's SETTINGS (which
    /// set the windows and frame size the request is sent with).
    pub fn handshake(io: S, deadline: Instant) -> Result<Connection<S>, Error> {
        let mut conn = Connection {
            io,
            read_buf: Vec::with_capacity(MAX_FRAME + 9),
            decoder: hpack::Decoder::new(hpack::TABLE_SIZE),
            next_stream: 1,
            send_window: DEFAULT_WINDOW,
            peer_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            going_away: false,
            broken: false,
        };
        match conn.open(deadline) {
            Ok(()) => Ok(conn),
            Err(e) => {
                conn.close_for(&e);
                Err(e)
            }
        }
    }

    fn open(&mut self, deadline: Instant) -> Result<(), Error> {
        let mut hello = PREFACE.to_vec();
        frame_into(&mut hello, SETTINGS, 0, 0, &OUR_SETTINGS);
        self.write(&hello, deadline)?;
        let mut budget = Budget::new();
        loop {
            let frame = self.read_frame(deadline)?;
            budget.spend(frame.kind)?;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    return self.on_settings(&frame, None, deadline);
                }
                SETTINGS | WINDOW_UPDATE | PING => {
                    self.on_frame(frame, None, &mut budget, deadline)?;
                }
                GOAWAY => {
                    self.on_frame(frame, None, &mut budget, deadline)?;
                    return Err(Error::Refused { code: NO_ERROR });
                }
                _ => return Err(Error::Protocol("the first frame is not SETTINGS")),
            }
        }
    }

    /// Whether a new request can be sent on this connection.
    pub fn usable(&self) -> bool {
        !self.going_away && !self.broken && self.next_stream < (1 << 31) - 2
    }

    /// Sends one request and reads its whole reply, by `deadline`. After an error
    /// other than [`Error::Reset`], the connection is no longer [`usable`](Self::usable).
    pub fn request(&mut self, request: &Request, deadline: Instant) -> Result<Response, Error> {
        if !self.usable() {
            return Err(Error::Refused { code: NO_ERROR });
        }
        let result = self.exchange(request, deadline);
        match &result {
            Ok(_) | Err(Error::Reset(_)) => {}
            Err(e) => self.close_for(e),
        }
        result
    }

    /// Marks the connection broken after `error`; a connection error is said to the
    /// peer first (best effort, within [`LINGER`]), with its code.
    fn close_for(&mut self, error: &Error) {
        self.broken = true;
        let Some(code) = goaway_code(error) else {
            return;
        };
        let [a, b, c, d] = code.to_be_bytes();
        let mut goaway = Vec::with_capacity(17);
        // Last stream id 0: we never accept a stream of the peer's.
        frame_into(&mut goaway, GOAWAY, 0, 0, &[0, 0, 0, 0, a, b, c, d]);
        let now = Instant::now();
        let deadline = now.checked_add(LINGER).unwrap_or(now);
        if self.write(&goaway, deadline).is_err() || self.io.close_write().is_err() {
            return;
        }
        self.read_buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let mut drained = 0;
        while let Ok(left) = left(deadline) {
            if drained >= LINGER_BYTES {
                std::thread::sleep(left);
                return;
            }
            if self.io.set_timeout(left).is_err() {
                return;
            }
            match self.io.read(&mut chunk) {
                // The peer closed too (or the time is up, or it reset): done.
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}

impl<S: Io> Connection<S> {
    /// Reads the peer's SETTINGS (or their ACK), applies them to the windows and
    /// the frame size, and acknowledges them.
    fn on_settings(
        &mut self,
        frame: &Frame,
        stream: Option<&mut Stream>,
        deadline: Instant,
    ) -> Result<(), Error> {
        if frame.stream != 0 {
            return Err(Error::Protocol("SETTINGS on a stream"));
        }
        if frame.flags & ACK != 0 {
            if !frame.payload.is_empty() {
                return Err(Error::Protocol("a SETTINGS ACK with a payload"));
            }
            return Ok(());
        }
        if !frame.payload.len().is_multiple_of(6) {
            return Err(Error::Protocol("SETTINGS not a multiple of 6 bytes"));
        }
        let mut stream = stream;
        for setting in frame.payload.chunks_exact(6) {
            let Ok([i0, i1, v0, v1, v2, v3]) = <[u8; 6]>::try_from(setting) else {
                return Err(Error::Protocol("SETTINGS not a multiple of 6 bytes"));
            };
            let value = u32::from_be_bytes([v0, v1, v2, v3]);
            match u16::from_be_bytes([i0, i1]) {
                // SETTINGS_ENABLE_PUSH: a server may only say 0.
                0x2 if value != 0 => {
                    return Err(Error::Protocol("SETTINGS_ENABLE_PUSH from a server"));
                }
                // SETTINGS_INITIAL_WINDOW_SIZE: changes the open stream's window too.
                0x4 => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(Error::Protocol("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"));
                    }
                    if let Some(stream) = stream.as_deref_mut() {
                        stream.send_window = stream
                            .send_window
                            .saturating_add(value.saturating_sub(self.peer_window));
                        if stream.send_window > MAX_WINDOW {
                            return Err(Error::Protocol("a window above 2^31-1"));
                        }
                    }
                    self.peer_window = value;
                }
                // SETTINGS_MAX_FRAME_SIZE.
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(Error::Protocol("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    // Our frames stay within 16 KiB whatever the peer allows.
                    self.peer_max_frame = MAX_FRAME;
                }
                // The header table size does not matter (nothing sent is indexed);
                // the others do not apply to one stream at a time.
                _ => {}
            }
        }
        let mut ack = Vec::new();
        frame_into(&mut ack, SETTINGS, ACK, 0, &[]);
        self.write(&ack, deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn a_peer_that_closes_mid_reply_or_breaks_the_protocol_breaks_the_connection() {
        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(frame(HEADERS, END_HEADERS, 1, &reply_headers()));
        let (mut conn, written) = connect(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            conn.request(&request(b"x"), deadline),
            Err(Error::Io(_))
        ));
        assert!(!conn.usable());
        assert_eq!(
            goaways(&written),
            [0u32; 0],
            "nothing to say to a closed socket"
        );

        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x88]));
        let (mut conn, written) = connect(script);
        assert!(matches!(
            conn.request(&request(b"x"), deadline),
            Err(Error::Protocol(_))
        ));
        assert!(!conn.usable());
        assert_eq!(goaways(&written), [PROTOCOL_ERROR]);
    }
}
