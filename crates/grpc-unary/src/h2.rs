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

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub use crate::Error;

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
/// How many frames one request may read beyond those that carry its reply (SETTINGS,
/// PING, WINDOW_UPDATE, PRIORITY, GOAWAY, RST_STREAM and DATA of other streams, 1xx
/// replies, frames of unknown types, CONTINUATION): a few are normal (a SETTINGS and
/// its ACK, a keep-alive PING); floods of them (CVE-2019-9512, 9515, 9518) are not.
/// Body bytes sent or read earn more (see [`BYTES_PER_FRAME`]), so that a large body
/// sent through small windows is not cut short.
pub const FRAME_BUDGET: u64 = 128;
/// Bytes of body, sent or read, that earn one frame more of [`FRAME_BUDGET`]: a peer
/// that gives a window back 1 KiB at a time (two WINDOW_UPDATEs, stream and
/// connection) stays well within it; one that opens it a byte at a time, or answers
/// in 1-byte DATA frames, does not.
const BYTES_PER_FRAME: usize = 256;
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

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// What one request may still read: see [`FRAME_BUDGET`].
struct Budget {
    frames: u64,
    /// Bytes of body not yet worth a frame.
    bytes: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            frames: FRAME_BUDGET,
            bytes: 0,
        }
    }

    /// One frame read, of type `kind`.
    fn spend(&mut self, kind: u8) -> Result<(), Error> {
        self.frames = self.frames.checked_sub(1).ok_or(Error::Calm(flood(kind)))?;
        Ok(())
    }

    /// `bytes` of body sent or read.
    fn earn(&mut self, bytes: usize) {
        let bytes = self.bytes.saturating_add(bytes);
        let frames = u64::try_from(bytes / BYTES_PER_FRAME).unwrap_or(u64::MAX);
        self.frames = self.frames.saturating_add(frames);
        self.bytes = bytes % BYTES_PER_FRAME;
    }
}

/// What a budget ran out on.
fn flood(kind: u8) -> &'static str {
    match kind {
        DATA => "a flood of DATA frames that carry no reply",
        HEADERS => "a flood of HEADERS frames (informational replies, other streams)",
        PRIORITY => "a flood of PRIORITY frames",
        RST_STREAM => "a flood of RST_STREAM frames",
        SETTINGS => "a flood of SETTINGS frames",
        PING => "a flood of PING frames",
        GOAWAY => "a flood of GOAWAY frames",
        WINDOW_UPDATE => "a flood of WINDOW_UPDATE frames",
        CONTINUATION => "a flood of CONTINUATION frames",
        _ => "a flood of frames of unknown types",
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

/// One header block, decoded.
#[derive(Default)]
struct Decoded {
    status: Option<u16>,
    fields: Vec<(String, Vec<u8>)>,
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

    fn exchange(&mut self, request: &Request, deadline: Instant) -> Result<Response, Error> {
        let id = self.next_stream;
        self.next_stream = id.checked_add(2).ok_or(Error::Refused { code: NO_ERROR })?;
        let mut stream = Stream {
            id,
            send_window: self.peer_window,
            response: None,
            done: false,
        };
        let mut budget = Budget::new();
        let block = encode_headers(request);
        let mut out = Vec::with_capacity(block.len() + 32);
        let end = if request.body.is_empty() {
            END_STREAM
        } else {
            0
        };
        // HEADERS, then CONTINUATION frames for what does not fit in one frame.
        let mut chunks = block.chunks(self.peer_max_frame.max(1)).peekable();
        let mut kind = HEADERS;
        let mut flags = end;
        while let Some(chunk) = chunks.next() {
            if chunks.peek().is_none() {
                flags |= END_HEADERS;
            }
            frame_into(&mut out, kind, flags, id, chunk);
            kind = CONTINUATION;
            flags = 0;
        }
        if block.is_empty() {
            frame_into(&mut out, HEADERS, end | END_HEADERS, id, &[]);
        }
        self.write(&out, deadline)?;
        let body = request.body;
        let mut sent = 0;
        while !stream.done {
            let rest = body.get(sent..).unwrap_or_default();
            let window = self.send_window.min(stream.send_window).max(0);
            let n = rest
                .len()
                .min(self.peer_max_frame)
                .min(usize::try_from(window).unwrap_or(0));
            if let Some(chunk) = rest.get(..n).filter(|c| !c.is_empty()) {
                out.clear();
                let flags = if n == rest.len() { END_STREAM } else { 0 };
                frame_into(&mut out, DATA, flags, id, chunk);
                self.write(&out, deadline)?;
                sent += n;
                // n is at most the window, itself at most 2^31 - 1.
                let n = i64::try_from(n).unwrap_or(MAX_WINDOW);
                self.send_window -= n;
                stream.send_window -= n;
                budget.earn(chunk.len());
                continue;
            }
            // Nothing can be sent: read what the peer says (a WINDOW_UPDATE, the reply).
            let frame = self.read_frame(deadline)?;
            budget.spend(frame.kind)?;
            self.on_frame(frame, Some(&mut stream), &mut budget, deadline)?;
        }
        if sent < body.len() {
            // The peer replied before it had the whole body: it wants no more.
            let mut rst = Vec::new();
            frame_into(&mut rst, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
            self.write(&rst, deadline)?;
        }
        stream
            .response
            .take()
            .ok_or(Error::Protocol("a reply without :status"))
    }

    /// A stream in the "idle" state (RFC 9113 5.1): one we never opened (an even id,
    /// or one at or above the next we would open). Stream 0 is not a stream.
    fn idle(&self, id: u32) -> bool {
        id != 0 && (id.is_multiple_of(2) || id >= self.next_stream)
    }

    fn on_frame(
        &mut self,
        frame: Frame,
        stream: Option<&mut Stream>,
        budget: &mut Budget,
        deadline: Instant,
    ) -> Result<(), Error> {
        let ours = stream.as_ref().is_some_and(|s| s.id == frame.stream);
        if self.idle(frame.stream)
            && matches!(frame.kind, DATA | HEADERS | RST_STREAM | WINDOW_UPDATE)
        {
            return Err(Error::Protocol("a frame on a stream never opened"));
        }
        match frame.kind {
            DATA => {
                if frame.stream == 0 {
                    return Err(Error::Protocol("DATA on stream 0"));
                }
                let len = u32::try_from(frame.payload.len()).unwrap_or(u32::MAX);
                // Give back at once what was read: the connection's window always, the
                // stream's while it stays open.
                let mut updates = Vec::new();
                if len > 0 {
                    frame_into(&mut updates, WINDOW_UPDATE, 0, 0, &len.to_be_bytes());
                    if ours && frame.flags & END_STREAM == 0 {
                        frame_into(
                            &mut updates,
                            WINDOW_UPDATE,
                            0,
                            frame.stream,
                            &len.to_be_bytes(),
                        );
                    }
                    self.write(&updates, deadline)?;
                }
                if let Some(stream) = stream.filter(|_| ours) {
                    let data = unpad(&frame.payload, frame.flags)?;
                    let response = stream
                        .response
                        .as_mut()
                        .ok_or(Error::Protocol("DATA before HEADERS"))?;
                    if response.body.len().saturating_add(data.len()) > MAX_BODY {
                        return Err(Error::TooLarge);
                    }
                    response.body.extend_from_slice(data);
                    budget.earn(data.len());
                    stream.done |= frame.flags & END_STREAM != 0;
                }
            }
            HEADERS => {
                if frame.stream == 0 {
                    return Err(Error::Protocol("HEADERS on stream 0"));
                }
                let end_stream = frame.flags & END_STREAM != 0;
                let block = self.header_block(frame, budget, deadline)?;
                // Every block is decoded, ours or not: the decoder's table depends on it.
                let decoded = self.decode(&block)?;
                let Some(stream) = stream.filter(|_| ours) else {
                    return Ok(());
                };
                match (&mut stream.response, decoded.status) {
                    // Informational (RFC 9113 8.1): skipped, the final reply follows.
                    (None, Some(101)) => {
                        return Err(Error::Protocol("101 Switching Protocols in HTTP/2"));
                    }
                    (None, Some(100..=199)) if end_stream => {
                        return Err(Error::Protocol(
                            "an informational (1xx) reply that ends the stream",
                        ));
                    }
                    (None, Some(100..=199)) => {}
                    (None, Some(status)) => {
                        stream.response = Some(Response {
                            status,
                            headers: decoded.fields,
                            ..Response::default()
                        });
                    }
                    (None, None) => return Err(Error::Protocol("a reply without :status")),
                    (Some(response), None) if end_stream => response.trailers = decoded.fields,
                    (Some(_), None) => {
                        return Err(Error::Protocol("trailers that do not end the stream"));
                    }
                    (Some(_), Some(_)) => return Err(Error::Protocol("a :status in trailers")),
                }
                stream.done |= end_stream;
            }
            RST_STREAM => {
                if frame.stream == 0 {
                    return Err(Error::Protocol("RST_STREAM on stream 0"));
                }
                let code = u32_of(&frame.payload)?;
                if ours {
                    return Err(Error::Reset(code));
                }
            }
            SETTINGS => self.on_settings(&frame, stream, deadline)?,
            PUSH_PROMISE => return Err(Error::Protocol("PUSH_PROMISE with push disabled")),
            PING => {
                if frame.payload.len() != 8 || frame.stream != 0 {
                    return Err(Error::Protocol("PING not 8 bytes on stream 0"));
                }
                if frame.flags & ACK == 0 {
                    let mut pong = Vec::new();
                    frame_into(&mut pong, PING, ACK, 0, &frame.payload);
                    self.write(&pong, deadline)?;
                }
            }
            GOAWAY => {
                if frame.stream != 0 {
                    return Err(Error::Protocol("GOAWAY on a stream"));
                }
                let last = u32_at(&frame.payload, 0)? & 0x7fff_ffff;
                let code = u32_at(&frame.payload, 4)?;
                self.going_away = true;
                if stream.is_some_and(|s| s.id > last) {
                    return Err(Error::Refused { code });
                }
            }
            WINDOW_UPDATE => {
                let increment = i64::from(u32_of(&frame.payload)? & 0x7fff_ffff);
                if increment == 0 {
                    return Err(Error::Protocol("WINDOW_UPDATE of 0"));
                }
                let window = if frame.stream == 0 {
                    &mut self.send_window
                } else if let Some(stream) = stream.filter(|_| ours) {
                    &mut stream.send_window
                } else {
                    return Ok(());
                };
                *window = window.saturating_add(increment);
                if *window > MAX_WINDOW {
                    return Err(Error::Protocol("a window above 2^31-1"));
                }
            }
            CONTINUATION => return Err(Error::Protocol("CONTINUATION without HEADERS")),
            // PRIORITY and unknown frame types are ignored (and counted).
            _ => {}
        }
        Ok(())
    }

    /// The header block `frame` starts: its fragment and those of the CONTINUATION
    /// frames that follow, up to END_HEADERS, within [`MAX_HEADER_BLOCK`] and
    /// [`MAX_CONTINUATIONS`].
    fn header_block(
        &mut self,
        frame: Frame,
        budget: &mut Budget,
        deadline: Instant,
    ) -> Result<Vec<u8>, Error> {
        let too_large = Error::Calm("a header block larger than SETTINGS_MAX_HEADER_LIST_SIZE");
        let mut fragment = unpad(&frame.payload, frame.flags)?;
        if frame.flags & PRIORITY_FLAG != 0 {
            fragment = fragment
                .get(5..)
                .ok_or(Error::Protocol("HEADERS too short"))?;
        }
        if fragment.len() > MAX_HEADER_BLOCK {
            return Err(too_large);
        }
        let mut block = fragment.to_vec();
        let mut flags = frame.flags;
        let mut continuations = 0;
        while flags & END_HEADERS == 0 {
            let next = self.read_frame(deadline)?;
            if next.kind != CONTINUATION || next.stream != frame.stream {
                return Err(Error::Protocol("a header block not continued"));
            }
            budget.spend(CONTINUATION)?;
            continuations += 1;
            if continuations > MAX_CONTINUATIONS {
                return Err(Error::Calm(
                    "more CONTINUATION frames in one header block than allowed",
                ));
            }
            if block.len().saturating_add(next.payload.len()) > MAX_HEADER_BLOCK {
                return Err(too_large);
            }
            block.extend_from_slice(&next.payload);
            flags = next.flags;
        }
        Ok(block)
    }

    /// Decodes a header block: its :status and its regular fields, within
    /// [`MAX_HEADER_LIST`] (decoding stops as soon as it is passed).
    fn decode(&mut self, block: &[u8]) -> Result<Decoded, Error> {
        let mut decoded = Decoded::default();
        let mut malformed = None;
        self.decoder
            .decode(block, MAX_HEADER_LIST, |name, value| {
                if malformed.is_some() {
                    return;
                }
                if let Some(pseudo) = name.strip_prefix(b":") {
                    malformed = if !decoded.fields.is_empty() {
                        Some("a pseudo-header after a regular field")
                    } else if pseudo != b"status" {
                        Some("a pseudo-header other than :status in a reply")
                    } else if decoded.status.is_some() {
                        Some("two :status in a reply")
                    } else {
                        decoded.status = status_code(value);
                        decoded
                            .status
                            .is_none()
                            .then_some("a :status that is not a status code (100 to 599)")
                    };
                } else {
                    let name = String::from_utf8_lossy(name).into_owned();
                    decoded.fields.push((name, value.to_vec()));
                }
            })
            .map_err(|e| match e {
                hpack::Refused::TooLarge => {
                    Error::Calm("a header list larger than SETTINGS_MAX_HEADER_LIST_SIZE")
                }
                hpack::Refused::Invalid(what) => Error::Compression(what),
            })?;
        match malformed {
            Some(what) => Err(Error::Protocol(what)),
            None => Ok(decoded),
        }
    }

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

    /// Writes all of `bytes` by `deadline`.
    fn write(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), Error> {
        while !bytes.is_empty() {
            self.io.set_timeout(left(deadline)?)?;
            match self.io.write(bytes) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e).into()),
            }
        }
        self.io.flush()?;
        Ok(())
    }

    /// Reads one frame by `deadline`.
    fn read_frame(&mut self, deadline: Instant) -> Result<Frame, Error> {
        self.fill(9, deadline)?;
        let Some(&[l0, l1, l2, kind, flags, s0, s1, s2, s3]) = self.read_buf.first_chunk::<9>()
        else {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        };
        let len = u32::from_be_bytes([0, l0, l1, l2]) as usize;
        let stream = u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            if self.read_buf.starts_with(b"HTTP/1.") {
                return Err(Error::Protocol(
                    "the server answered in HTTP/1.x: not an OTLP/gRPC endpoint (4318 is OTLP/HTTP's port)",
                ));
            }
            return Err(Error::Protocol(
                "a frame larger than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        let end = 9 + len;
        self.fill(end, deadline)?;
        let payload = self
            .read_buf
            .get(9..end)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?
            .to_vec();
        self.read_buf.drain(..end.min(self.read_buf.len()));
        Ok(Frame {
            kind,
            flags,
            stream,
            payload,
        })
    }

    /// Reads until `n` bytes are buffered (`n` is at most a frame: the buffer stays
    /// within a frame and one read more).
    fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), Error> {
        let mut chunk = [0u8; 8192];
        while self.read_buf.len() < n {
            self.io.set_timeout(left(deadline)?)?;
            match self.io.read(&mut chunk) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(got) => self
                    .read_buf
                    .extend_from_slice(chunk.get(..got).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e).into()),
            }
        }
        Ok(())
    }
}

/// A `:status` value: three digits, 100 to 599 (RFC 9110 15).
fn status_code(value: &[u8]) -> Option<u16> {
    let &[a, b, c] = value else {
        return None;
    };
    let digit = |d: u8| d.is_ascii_digit().then(|| u16::from(d - b'0'));
    let code = digit(a)? * 100 + digit(b)? * 10 + digit(c)?;
    (100..=599).contains(&code).then_some(code)
}

/// The time left before `deadline`, or a timeout error.
fn left(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::from(io::ErrorKind::TimedOut));
    }
    Ok(left)
}

/// A socket timeout reads as WouldBlock on Unix: say TimedOut.
fn timed_out(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        io::Error::from(io::ErrorKind::TimedOut)
    } else {
        e
    }
}

/// The 4-byte big-endian number at `at`.
fn u32_at(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..)
        .and_then(<[u8]>::first_chunk::<4>)
        .map(|b| u32::from_be_bytes(*b))
        .ok_or(Error::Protocol("a frame too short"))
}

/// The payload of a frame that is one 4-byte number (RST_STREAM, WINDOW_UPDATE).
fn u32_of(payload: &[u8]) -> Result<u32, Error> {
    match *payload {
        [a, b, c, d] => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(Error::Protocol("a frame of the wrong size")),
    }
}

/// The payload without its padding (PADDED flag).
fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], Error> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or(Error::Protocol("padding missing"))?;
    rest.len()
        .checked_sub(usize::from(pad))
        .and_then(|end| rest.get(..end))
        .ok_or(Error::Protocol("padding longer than the frame"))
}

/// Appends one frame (`payload` is at most a frame: 16 KiB).
fn frame_into(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let [_, l0, l1, l2] = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    out.extend_from_slice(&[l0, l1, l2, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The request's header block: `:method POST` and `:scheme` from the static table,
/// everything else as literals never indexed (RFC 7541, 6.2.3), without Huffman.
fn encode_headers(request: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(0x80 | 3); // :method POST
    out.push(if request.scheme == "https" {
        0x80 | 7
    } else {
        0x80 | 6
    });
    for (index, value) in [(1, request.authority), (4, request.path)] {
        integer_into(&mut out, 0x10, 4, index);
        string_into(&mut out, value.as_bytes());
    }
    for (name, value) in request.headers {
        out.push(0x10);
        string_into(&mut out, name.as_bytes());
        string_into(&mut out, value);
    }
    out
}

fn string_into(out: &mut Vec<u8>, s: &[u8]) {
    integer_into(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (`n` is 4 or 7), after the `first` bits
/// (RFC 7541, 5.1).
fn integer_into(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// HPACK decoding (RFC 7541), for the replies: integers, string literals (Huffman by a
/// table of 4-bit steps built at compile time from the code lengths of Appendix B),
/// the static table and a dynamic table of at most [`TABLE_SIZE`] bytes.
///
/// Bounded: the decoded header list is counted as it is decoded (name + value + 32 per
/// field) and decoding stops as soon as it passes the limit given, before any string
/// beyond it is copied; integers are at most 4 continuation bytes; table size updates
/// come only at the start of a block, at most two, never above the limit.
pub mod hpack {
    use std::collections::VecDeque;
    use std::sync::LazyLock;

    /// The dynamic table's largest size: SETTINGS_HEADER_TABLE_SIZE's default, which
    /// we never change.
    pub const TABLE_SIZE: usize = 4096;

    /// Why a header block was not decoded.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Refused {
        /// Not valid HPACK (the decoder's table is no longer known).
        Invalid(&'static str),
        /// The decoded list passed the limit; decoding stopped there.
        TooLarge,
    }

    /// A field of the dynamic table: its name and value.
    type Entry = (Box<[u8]>, Box<[u8]>);

    const TRUNCATED: Refused = Refused::Invalid("a header block cut short");

    /// An HPACK decoder: the dynamic table of one connection.
    pub struct Decoder {
        /// Newest first.
        table: VecDeque<Entry>,
        /// Its size, as RFC 7541 4.1 counts it.
        size: usize,
        /// The largest size the peer has set (at most `limit`).
        max_size: usize,
        /// The largest size the peer may set.
        limit: usize,
    }

    impl Decoder {
        /// A decoder whose table may hold `limit` bytes.
        pub fn new(limit: usize) -> Decoder {
            Decoder {
                table: VecDeque::new(),
                size: 0,
                max_size: limit,
                limit,
            }
        }

        /// Decodes one header block, handing each field to `field` in order, until the
        /// list (name + value + 32 per field) would pass `max_list`.
        pub fn decode(
            &mut self,
            block: &[u8],
            max_list: usize,
            mut field: impl FnMut(&[u8], &[u8]),
        ) -> Result<(), Refused> {
            let mut rest = block;
            // The strings of the literal being decoded.
            let (mut name, mut value) = (Vec::new(), Vec::new());
            let mut list = 0usize;
            let mut first = true;
            let mut updates = 0;
            while let Some(&head) = rest.first() {
                // What the list can still take for this field's name and value.
                let room = max_list
                    .checked_sub(list)
                    .and_then(|room| room.checked_sub(32))
                    .ok_or(Refused::TooLarge);
                if head & 0x80 != 0 {
                    // Indexed field (6.1).
                    let index = integer(&mut rest, 7)?;
                    let (name, value) = self.entry(index)?;
                    if name.len().saturating_add(value.len()) > room? {
                        return Err(Refused::TooLarge);
                    }
                    list += name.len() + value.len() + 32;
                    field(name, value);
                } else if head & 0xe0 == 0x20 {
                    // Dynamic table size update (6.3): at the start of a block, at most
                    // two (4.2).
                    updates += 1;
                    if !first || updates > 2 {
                        return Err(Refused::Invalid("a table size update out of place"));
                    }
                    let size = integer(&mut rest, 5)?;
                    if size > self.limit {
                        return Err(Refused::Invalid("a table size update above the limit"));
                    }
                    self.max_size = size;
                    self.evict(0);
                    continue;
                } else {
                    // Literal (6.2): with incremental indexing (01), without indexing
                    // (0000) or never indexed (0001).
                    let indexing = head & 0x40 != 0;
                    let index = integer(&mut rest, if indexing { 6 } else { 4 })?;
                    self.literal(&mut rest, index, room?, &mut name, &mut value)?;
                    list += name.len() + value.len() + 32;
                    field(&name, &value);
                    if indexing {
                        self.insert(&name, &value);
                    }
                }
                first = false;
            }
            Ok(())
        }

        /// A literal's name (new, or from the tables at `index`) and value, within
        /// `room` bytes together.
        fn literal(
            &self,
            rest: &mut &[u8],
            index: usize,
            room: usize,
            name: &mut Vec<u8>,
            value: &mut Vec<u8>,
        ) -> Result<(), Refused> {
            name.clear();
            if index == 0 {
                string(rest, name, room)?;
            } else {
                let (indexed, _) = self.entry(index)?;
                if indexed.len() > room {
                    return Err(Refused::TooLarge);
                }
                name.extend_from_slice(indexed);
            }
            string(rest, value, room - name.len())
        }

        /// The field at `index` (1-based): the static table, then the dynamic one.
        fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Refused> {
            let beyond = Refused::Invalid("an index beyond the tables");
            if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC.get(i)) {
                return Ok((name, value));
            }
            let i = index.checked_sub(STATIC.len() + 1).ok_or(beyond)?;
            let (name, value) = self.table.get(i).ok_or(beyond)?;
            Ok((name, value))
        }

        /// Adds a field to the dynamic table, evicting the oldest to make room (4.4).
        fn insert(&mut self, name: &[u8], value: &[u8]) {
            let size = name.len() + value.len() + 32;
            if size > self.max_size {
                self.table.clear();
                self.size = 0;
                return;
            }
            self.evict(size);
            self.table.push_front((name.into(), value.into()));
            self.size += size;
        }

        /// Evicts the oldest entries until `room` bytes more fit.
        fn evict(&mut self, room: usize) {
            while self.size.saturating_add(room) > self.max_size {
                let Some((name, value)) = self.table.pop_back() else {
                    self.size = 0;
                    return;
                };
                self.size = self.size.saturating_sub(name.len() + value.len() + 32);
            }
        }

        #[cfg(test)]
        pub(super) fn table(&self) -> Vec<(&[u8], &[u8])> {
            self.table.iter().map(|(n, v)| (&n[..], &v[..])).collect()
        }
    }

    /// An integer with an `n`-bit prefix (5.1), of at most 4 continuation bytes (up
    /// to 2^28 and a bit: far more than any length or index in a frame).
    fn integer(rest: &mut &[u8], n: u32) -> Result<usize, Refused> {
        let (&first, tail) = rest.split_first().ok_or(TRUNCATED)?;
        *rest = tail;
        let max = (1usize << n) - 1;
        let mut value = usize::from(first) & max;
        if value < max {
            return Ok(value);
        }
        for shift in [0, 7, 14, 21] {
            let (&b, tail) = rest.split_first().ok_or(TRUNCATED)?;
            *rest = tail;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refused::Invalid("an integer too large"))
    }

    /// A string literal (5.2) into `out`, refused beyond `room` bytes decoded.
    fn string(rest: &mut &[u8], out: &mut Vec<u8>, room: usize) -> Result<(), Refused> {
        out.clear();
        let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
        let len = integer(rest, 7)?;
        let (bytes, tail) = rest.split_at_checked(len).ok_or(TRUNCATED)?;
        *rest = tail;
        if huffman {
            return huffman_decode(bytes, out, room);
        }
        if bytes.len() > room {
            return Err(Refused::TooLarge);
        }
        out.extend_from_slice(bytes);
        Ok(())
    }

    /// Decodes a Huffman-coded string (5.2, Appendix B) into `out`, 4 bits at a time.
    /// Refused: the EOS symbol, padding longer than 7 bits or not all ones, and more
    /// than `room` bytes.
    pub(super) fn huffman_decode(
        bytes: &[u8],
        out: &mut Vec<u8>,
        room: usize,
    ) -> Result<(), Refused> {
        let steps: &[[u8; 3]; 256 * 16] = &DECODE;
        let mut state = 0u8;
        let mut accept = true;
        for &byte in bytes {
            for nibble in [byte >> 4, byte & 0xf] {
                let step = usize::from(state) << 4 | usize::from(nibble);
                let &[next, symbol, flags] = steps.get(step).ok_or(TRUNCATED)?;
                if flags & FAIL != 0 {
                    return Err(Refused::Invalid("EOS in a Huffman string"));
                }
                if flags & EMIT != 0 {
                    if out.len() >= room {
                        return Err(Refused::TooLarge);
                    }
                    out.push(symbol);
                }
                state = next;
                accept = flags & ACCEPT != 0;
            }
        }
        if !accept {
            return Err(Refused::Invalid("a Huffman string badly padded"));
        }
        Ok(())
    }

    /// Huffman-codes `s`, padded with ones (for the tests).
    #[cfg(test)]
    pub(super) fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let codes = codes();
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in s {
            let len = u32::from(LENGTHS[usize::from(b)]);
            acc = (acc << len) | u64::from(codes[usize::from(b)]);
            bits += len;
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    /// The bit length of each symbol's code (RFC 7541 Appendix B), 256 (EOS) last. The
    /// code is canonical: the codes follow from the lengths.
    const LENGTHS: [u8; 257] = [
        13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, // 0
        28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 16
        6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, // ' ' 32
        5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, // '0' 48
        13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, // '@' 64
        7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, // 'P' 80
        15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, // '`' 96
        6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, // 'p' 112
        20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, // 128
        24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, // 144
        22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, // 160
        21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, // 176
        26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, // 192
        19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, // 208
        20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, // 224
        26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, // 240
        30, // EOS
    ];

    // The flags of a step.
    const EMIT: u8 = 1;
    const FAIL: u8 = 2;
    const ACCEPT: u8 = 4;

    /// The canonical codes of [`LENGTHS`]: in order of length, then of symbol.
    // Indexes bounded by construction; evaluated at compile time too (CHECKED), where
    // an index out of bounds fails the build, and the run computes the same.
    #[allow(clippy::indexing_slicing)]
    pub(super) const fn codes() -> [u32; 257] {
        let mut codes = [0u32; 257];
        let mut code = 0u32;
        let mut len = 1;
        while len <= 30 {
            let mut symbol = 0;
            while symbol < 257 {
                if LENGTHS[symbol] == len {
                    codes[symbol] = code;
                    code += 1;
                }
                symbol += 1;
            }
            code <<= 1;
            len += 1;
        }
        codes
    }

    /// The decoding steps: for each state (an inner node of the code tree, the root
    /// 0) and each 4 bits read, the next state, the symbol emitted (at most one: the
    /// shortest code is 5 bits), and flags: EMIT, FAIL (EOS reached), ACCEPT (the
    /// bits since the last symbol are a valid padding: at most 7, all ones).
    // As codes(): bounded by construction, and checked at compile time (CHECKED).
    #[allow(clippy::indexing_slicing)]
    const fn steps() -> [[u8; 3]; 256 * 16] {
        const LEAF: u16 = 0x8000;
        let codes = codes();
        // The tree: 256 inner nodes for 257 leaves; a child is a node's index or LEAF
        // with a symbol; 0 (the root) is nobody's child, so it means none yet.
        let mut tree = [[0u16; 2]; 256];
        let mut depth = [0u8; 256];
        let mut ones = [false; 256];
        ones[0] = true;
        let mut nodes = 1;
        let mut symbol = 0;
        while symbol < 257 {
            let len = LENGTHS[symbol] as u32;
            let mut node = 0;
            let mut i = len;
            while i > 0 {
                i -= 1;
                let bit = ((codes[symbol] >> i) & 1) as usize;
                if i == 0 {
                    tree[node][bit] = LEAF | symbol as u16;
                } else {
                    if tree[node][bit] == 0 {
                        tree[node][bit] = nodes as u16;
                        depth[nodes] = depth[node] + 1;
                        ones[nodes] = ones[node] && bit == 1;
                        nodes += 1;
                    }
                    node = tree[node][bit] as usize;
                }
            }
            symbol += 1;
        }
        let mut steps = [[0u8; 3]; 256 * 16];
        let mut state = 0;
        while state < 256 {
            let mut nibble = 0;
            while nibble < 16 {
                let mut node = state;
                let mut flags = 0;
                let mut emitted = 0;
                let mut i = 4;
                while i > 0 {
                    i -= 1;
                    let child = tree[node][(nibble >> i) & 1];
                    if child & LEAF == 0 {
                        node = child as usize;
                    } else if child & !LEAF == 256 {
                        flags = FAIL;
                        node = 0;
                        break;
                    } else {
                        flags |= EMIT;
                        emitted = (child & !LEAF) as u8;
                        node = 0;
                    }
                }
                if flags & FAIL == 0 && (node == 0 || (ones[node] && depth[node] <= 7)) {
                    flags |= ACCEPT;
                }
                steps[state * 16 + nibble] = [node as u8, emitted, flags];
                nibble += 1;
            }
            state += 1;
        }
        steps
    }

    /// The steps, built at the first Huffman string (12 KiB on the heap, some tens of
    /// microseconds once) rather than kept in the binary, whose size is budgeted.
    static DECODE: LazyLock<Box<[[u8; 3]; 256 * 16]>> = LazyLock::new(|| Box::new(steps()));

    /// The same steps evaluated at compile time and thrown away (CHECKED): an index
    /// out of bounds in building them fails the build, never a run.
    const _: [[u8; 3]; 256 * 16] = steps();

    /// The static table (Appendix A).
    static STATIC: [(&[u8], &[u8]); 61] = [
        (b":authority", b""),
        (b":method", b"GET"),
        (b":method", b"POST"),
        (b":path", b"/"),
        (b":path", b"/index.html"),
        (b":scheme", b"http"),
        (b":scheme", b"https"),
        (b":status", b"200"),
        (b":status", b"204"),
        (b":status", b"206"),
        (b":status", b"304"),
        (b":status", b"400"),
        (b":status", b"404"),
        (b":status", b"500"),
        (b"accept-charset", b""),
        (b"accept-encoding", b"gzip, deflate"),
        (b"accept-language", b""),
        (b"accept-ranges", b""),
        (b"accept", b""),
        (b"access-control-allow-origin", b""),
        (b"age", b""),
        (b"allow", b""),
        (b"authorization", b""),
        (b"cache-control", b""),
        (b"content-disposition", b""),
        (b"content-encoding", b""),
        (b"content-language", b""),
        (b"content-length", b""),
        (b"content-location", b""),
        (b"content-range", b""),
        (b"content-type", b""),
        (b"cookie", b""),
        (b"date", b""),
        (b"etag", b""),
        (b"expect", b""),
        (b"expires", b""),
        (b"from", b""),
        (b"host", b""),
        (b"if-match", b""),
        (b"if-modified-since", b""),
        (b"if-none-match", b""),
        (b"if-range", b""),
        (b"if-unmodified-since", b""),
        (b"last-modified", b""),
        (b"link", b""),
        (b"location", b""),
        (b"max-forwards", b""),
        (b"proxy-authenticate", b""),
        (b"proxy-authorization", b""),
        (b"range", b""),
        (b"referer", b""),
        (b"refresh", b""),
        (b"retry-after", b""),
        (b"server", b""),
        (b"set-cookie", b""),
        (b"strict-transport-security", b""),
        (b"transfer-encoding", b""),
        (b"user-agent", b""),
        (b"via", b""),
        (b"vary", b""),
        (b"www-authenticate", b""),
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A scripted peer: what it "sends" is read from `incoming`; what the client
    /// writes is kept in `written`.
    struct Scripted {
        incoming: io::Cursor<Vec<u8>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.incoming.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Io for Scripted {
        fn set_timeout(&self, _: Duration) -> io::Result<()> {
            Ok(())
        }

        /// Marks the end of what was written with a frame no peer would send: type
        /// 0xff on stream 0x7fffffff, empty.
        fn close_write(&mut self) -> io::Result<()> {
            self.written
                .lock()
                .unwrap()
                .extend(frame(0xff, 0, 0x7fff_ffff, &[]));
            Ok(())
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_into(&mut out, kind, flags, stream, payload);
        out
    }

    /// The frames in what the client wrote, after the preface.
    fn frames(written: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(written.starts_with(PREFACE));
        let mut rest = &written[PREFACE.len()..];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            out.push((rest[3], rest[4], stream, rest[9..9 + len].to_vec()));
            rest = &rest[9 + len..];
        }
        out
    }

    /// The error codes of the GOAWAY frames the client wrote; each must be the last
    /// thing written before our side of the connection is ended.
    fn goaways(written: &Mutex<Vec<u8>>) -> Vec<u32> {
        let frames = frames(&written.lock().unwrap());
        let closed = frames.iter().position(|f| f.0 == 0xff);
        let goaways: Vec<(usize, u32)> = frames
            .iter()
            .enumerate()
            .filter(|(_, f)| f.0 == GOAWAY)
            .map(|(i, f)| (i, u32::from_be_bytes(f.3[4..8].try_into().unwrap())))
            .collect();
        if let Some(&(i, _)) = goaways.last() {
            assert_eq!(closed, Some(i + 1), "GOAWAY, then the end of our side");
            assert_eq!(frames.len(), i + 2, "nothing after");
        } else {
            assert_eq!(closed, None);
        }
        goaways.into_iter().map(|(_, code)| code).collect()
    }

    fn scripted(script: Vec<u8>) -> (Scripted, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Scripted {
            incoming: io::Cursor::new(script),
            written: written.clone(),
        };
        (io, written)
    }

    fn connect(script: Vec<u8>) -> (Connection<Scripted>, Arc<Mutex<Vec<u8>>>) {
        let (io, written) = scripted(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        (Connection::handshake(io, deadline).unwrap(), written)
    }

    fn request(body: &[u8]) -> Request<'_> {
        Request {
            scheme: "http",
            authority: "collector:4317",
            path: "/svc/Export",
            headers: &[("content-type", b"application/grpc")],
            body,
        }
    }

    /// SETTINGS, then `frames` after it, then the request: its result and what the
    /// client wrote.
    fn exchange(body: &[u8], after: Vec<u8>) -> (Result<Response, Error>, Vec<u32>) {
        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(after);
        let (mut conn, written) = connect(script);
        let result = conn.request(&request(body), Instant::now() + Duration::from_secs(5));
        if !matches!(result, Ok(_) | Err(Error::Reset(_))) {
            assert!(!conn.usable());
        }
        (result, goaways(&written))
    }

    /// `:status: 200` (static index 8).
    fn reply_headers() -> Vec<u8> {
        vec![0x88]
    }

    /// A header block of `:status` `status`, as a literal with the name indexed.
    fn status_block(status: &[u8]) -> Vec<u8> {
        let mut block = vec![0x08];
        string_into(&mut block, status);
        block
    }

    /// Trailers: `custom-key: custom-value` Huffman-coded and indexed (RFC 7541,
    /// C.4.1's strings), `grpc-status: 0` as a raw literal, then the first field again
    /// from the dynamic table (index 62).
    fn grpc_status_ok_huffman() -> Vec<u8> {
        let mut block = vec![0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f];
        block.extend([0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf]);
        block.push(0x00);
        string_into(&mut block, b"grpc-status");
        string_into(&mut block, b"0");
        block.push(0x80 | 62);
        block
    }

    fn trailers_ok(id: u32) -> Vec<u8> {
        let mut block = reply_headers();
        block.push(0x00);
        string_into(&mut block, b"grpc-status");
        string_into(&mut block, b"0");
        frame(HEADERS, END_HEADERS | END_STREAM, id, &block)
    }

    #[test]
    fn a_body_larger_than_the_window_waits_for_window_updates_and_the_reply_is_read() {
        let body = vec![7u8; 100_000];
        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(frame(SETTINGS, ACK, 0, &[]));
        script.extend(frame(PING, 0, 0, b"12345678"));
        // 65,535 bytes go out; then the peer opens both windows.
        script.extend(frame(WINDOW_UPDATE, 0, 1, &40_000u32.to_be_bytes()));
        script.extend(frame(WINDOW_UPDATE, 0, 0, &40_000u32.to_be_bytes()));
        script.extend(frame(HEADERS, END_HEADERS, 1, &reply_headers()));
        script.extend(frame(DATA, PADDED, 1, &[2, b'o', b'k', 0, 0]));
        // Trailers across HEADERS + CONTINUATION.
        let trailers = grpc_status_ok_huffman();
        script.extend(frame(HEADERS, END_STREAM, 1, &trailers[..4]));
        script.extend(frame(CONTINUATION, END_HEADERS, 1, &trailers[4..]));
        let (mut conn, written) = connect(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        let response = conn.request(&request(&body), deadline).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"ok");
        assert_eq!(response.field("grpc-status"), Some(&b"0"[..]));
        let custom = (String::from("custom-key"), b"custom-value".to_vec());
        assert_eq!(
            response.trailers.iter().filter(|f| **f == custom).count(),
            2
        );
        assert!(conn.usable());
        let frames = frames(&written.lock().unwrap());
        // Our SETTINGS: no push, and the header list size.
        assert_eq!(frames[0], (SETTINGS, 0, 0, OUR_SETTINGS.to_vec()));
        assert_eq!(OUR_SETTINGS[6..], [0, 6, 0, 0, 0x40, 0]);
        let sent: usize = frames
            .iter()
            .filter(|f| f.0 == DATA)
            .map(|f| f.3.len())
            .sum();
        assert_eq!(sent, body.len(), "the whole body, once");
        assert!(frames.iter().all(|f| f.0 != DATA || f.3.len() <= MAX_FRAME));
        let last = frames.iter().rfind(|f| f.0 == DATA).unwrap();
        assert_eq!(last.1 & END_STREAM, END_STREAM);
        assert!(
            frames.contains(&(SETTINGS, ACK, 0, vec![])),
            "SETTINGS acked"
        );
        assert!(
            frames.contains(&(PING, ACK, 0, b"12345678".to_vec())),
            "PING answered"
        );
        // The 5 bytes of the padded DATA frame are given back on the connection; the
        // stream was still open, so on the stream too.
        assert!(frames.contains(&(WINDOW_UPDATE, 0, 0, 5u32.to_be_bytes().to_vec())));
        assert!(frames.contains(&(WINDOW_UPDATE, 0, 1, 5u32.to_be_bytes().to_vec())));
        // The first 65,535 bytes went before any WINDOW_UPDATE was read.
        let before: usize = frames
            .iter()
            .filter(|f| f.0 == DATA)
            .take_while(|f| f.1 & END_STREAM == 0)
            .map(|f| f.3.len())
            .sum();
        assert!(before >= 65_535);
    }

    #[test]
    fn a_trailers_only_reply_ends_the_stream_in_its_headers() {
        let mut script = frame(SETTINGS, 0, 0, &[]);
        // :status 200, content-type application/grpc (literal), grpc-status 14 (literal).
        let mut block = vec![0x88, 0x00];
        string_into(&mut block, b"grpc-status");
        string_into(&mut block, b"14");
        block.push(0x00);
        string_into(&mut block, b"grpc-message");
        string_into(&mut block, b"try%20later");
        script.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        let (mut conn, written) = connect(script);
        let response = conn
            .request(
                &request(b"\0\0\0\0\0"),
                Instant::now() + Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(response.field("grpc-status"), Some(&b"14"[..]));
        assert_eq!(response.field("grpc-message"), Some(&b"try%20later"[..]));
        assert!(response.body.is_empty());
        // The 5-byte body had gone out already: no RST_STREAM needed.
        let frames = frames(&written.lock().unwrap());
        assert!(frames.iter().all(|f| f.0 != RST_STREAM));
    }

    #[test]
    fn goaway_before_the_stream_is_refused_and_rst_stream_is_a_reset() {
        let mut script = frame(SETTINGS, 0, 0, &[]);
        let mut goaway = 0u32.to_be_bytes().to_vec();
        goaway.extend(NO_ERROR.to_be_bytes());
        script.extend(frame(GOAWAY, 0, 0, &goaway));
        let (mut conn, _) = connect(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            conn.request(&request(b"x"), deadline),
            Err(Error::Refused { .. })
        ));
        assert!(!conn.usable(), "no new stream after GOAWAY");

        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(frame(RST_STREAM, 0, 1, &0x2u32.to_be_bytes()));
        let (mut conn, _) = connect(script);
        assert!(matches!(
            conn.request(&request(b"x"), deadline),
            Err(Error::Reset(2))
        ));
        assert!(conn.usable(), "a reset stream leaves the connection");
    }

    #[test]
    fn a_goaway_after_the_stream_lets_it_finish_then_the_connection_is_retired() {
        let mut script = frame(SETTINGS, 0, 0, &[]);
        let mut goaway = 1u32.to_be_bytes().to_vec();
        goaway.extend(NO_ERROR.to_be_bytes());
        script.extend(frame(GOAWAY, 0, 0, &goaway));
        script.extend(frame(HEADERS, END_HEADERS, 1, &reply_headers()));
        script.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &grpc_status_ok_huffman(),
        ));
        let (mut conn, _) = connect(script);
        let response = conn
            .request(&request(b"x"), Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(response.field("grpc-status"), Some(&b"0"[..]));
        assert!(!conn.usable());
    }

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

    #[test]
    fn an_http1_server_is_named_as_such() {
        for reply in [
            &b"HTTP/1.1 400 Bad Request\r\n\r\n"[..],
            b"HTTP/1.0 505 HTTP Version Not Supported\r\nContent-Type: text/html\r\n\r\n",
        ] {
            let (io, _) = scripted(reply.to_vec());
            let deadline = Instant::now() + Duration::from_secs(5);
            let Err(Error::Protocol(what)) = Connection::handshake(io, deadline) else {
                panic!("not a protocol error");
            };
            assert!(what.contains("answered in HTTP/1.x"), "{what}");
        }
    }

    #[test]
    fn request_headers_are_literals_never_indexed() {
        let block = encode_headers(&Request {
            scheme: "http",
            authority: "c:4317",
            path: "/p",
            headers: &[("authorization", b"Bearer s3cret")],
            body: b"",
        });
        let mut decoder = hpack::Decoder::new(hpack::TABLE_SIZE);
        let mut fields = Vec::new();
        decoder
            .decode(&block, MAX_HEADER_LIST, |n, v| {
                fields.push((n.to_vec(), v.to_vec()))
            })
            .unwrap();
        let fields: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect();
        assert_eq!(
            fields,
            vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":authority", b"c:4317"),
                (b":path", b"/p"),
                (b"authorization", b"Bearer s3cret"),
            ]
        );
        assert!(decoder.table().is_empty(), "nothing indexed");
        // Every literal is "never indexed" (0001xxxx) after the two indexed fields.
        assert_eq!(block[2] & 0xf0, 0x10);
        let mut long = Vec::new();
        integer_into(&mut long, 0, 7, 1337);
        assert_eq!(long, [127, 0xba, 0x09]);
    }

    // ------------------------------------------------------------ status and 1xx

    #[test]
    fn informational_replies_are_skipped_and_the_final_one_read() {
        let mut after = frame(HEADERS, END_HEADERS, 1, &status_block(b"103"));
        after.extend(frame(HEADERS, END_HEADERS, 1, &status_block(b"100")));
        after.extend(trailers_ok(1));
        let (result, goaways) = exchange(b"x", after);
        let response = result.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.field("grpc-status"), Some(&b"0"[..]));
        assert_eq!(goaways, [0u32; 0]);
    }

    #[test]
    fn an_informational_reply_that_ends_the_stream_or_a_101_is_a_protocol_error() {
        for (status, flags) in [
            (&b"103"[..], END_HEADERS | END_STREAM),
            (b"101", END_HEADERS),
        ] {
            let after = frame(HEADERS, flags, 1, &status_block(status));
            let (result, goaways) = exchange(b"x", after);
            assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
            assert_eq!(goaways, [PROTOCOL_ERROR]);
        }
    }

    #[test]
    fn a_status_that_is_not_a_status_code_is_a_protocol_error() {
        for status in [&b"42"[..], b"1000", b"099", b"600", b"2x0", b"", b"+20"] {
            let after = frame(HEADERS, END_HEADERS | END_STREAM, 1, &status_block(status));
            let (result, goaways) = exchange(b"x", after);
            let Err(Error::Protocol(what)) = result else {
                panic!("{status:?}: {result:?}");
            };
            assert!(what.contains(":status"), "{what}");
            assert_eq!(goaways, [PROTOCOL_ERROR]);
        }
        // None at all, two, one in the trailers, trailers that do not end the stream.
        let mut two = reply_headers();
        two.push(0x88);
        let mut after_field = vec![0x00];
        string_into(&mut after_field, b"a");
        string_into(&mut after_field, b"b");
        after_field.push(0x88);
        let cases = [
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &[0x00, 1, b'a', 1, b'b'],
            ),
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &two),
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &after_field),
            [
                frame(HEADERS, END_HEADERS, 1, &reply_headers()),
                frame(HEADERS, END_HEADERS | END_STREAM, 1, &reply_headers()),
            ]
            .concat(),
            [
                frame(HEADERS, END_HEADERS, 1, &reply_headers()),
                frame(HEADERS, END_HEADERS, 1, &[0x00, 1, b'a', 1, b'b']),
            ]
            .concat(),
        ];
        for after in cases {
            let (result, goaways) = exchange(b"x", after);
            assert!(matches!(result, Err(Error::Protocol(_))), "{result:?}");
            assert_eq!(goaways, [PROTOCOL_ERROR]);
        }
    }

    #[test]
    fn frames_on_a_stream_never_opened_are_a_protocol_error() {
        for kind in [DATA, HEADERS, RST_STREAM, WINDOW_UPDATE] {
            for stream in [2, 3, 5, 0x7fff_ffff] {
                let payload: &[u8] = match kind {
                    HEADERS => &[0x88],
                    RST_STREAM | WINDOW_UPDATE => &[0, 0, 0, 1],
                    _ => b"data",
                };
                let after = frame(kind, END_HEADERS, stream, payload);
                let (result, goaways) = exchange(b"x", after);
                let Err(Error::Protocol(what)) = result else {
                    panic!("{kind} on {stream}: {result:?}");
                };
                assert!(what.contains("never opened"), "{what}");
                assert_eq!(goaways, [PROTOCOL_ERROR]);
            }
        }
        // PRIORITY may name any stream; a stream of ours that is closed is not idle.
        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(trailers_ok(1));
        script.extend(frame(PRIORITY, 0, 9, &[0, 0, 0, 0, 7]));
        script.extend(frame(DATA, 0, 1, b"late"));
        script.extend(frame(WINDOW_UPDATE, 0, 1, &[0, 0, 0, 1]));
        script.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        script.extend(trailers_ok(3));
        let (mut conn, written) = connect(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        conn.request(&request(b"x"), deadline).unwrap();
        conn.request(&request(b"x"), deadline).unwrap();
        assert_eq!(goaways(&written), [0u32; 0]);
    }

    // ------------------------------------------------------------ budgets

    /// The request's result against `count` frames `make(i)` after SETTINGS, and how
    /// many frames the client wrote in answer to them.
    fn flood(count: usize, make: impl Fn(usize) -> Vec<u8>) -> (Result<Response, Error>, Vec<u32>) {
        let after: Vec<u8> = (0..count).flat_map(make).collect();
        exchange(b"x", after)
    }

    #[test]
    fn a_flood_of_frames_that_carry_no_reply_is_told_to_calm_down() {
        let n = FRAME_BUDGET as usize + 50;
        type Make = Box<dyn Fn(usize) -> Vec<u8>>;
        let floods: Vec<(&str, Make)> = vec![
            ("PING", Box::new(|_| frame(PING, 0, 0, b"12345678"))),
            (
                "SETTINGS",
                Box::new(|_| frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0])),
            ),
            ("SETTINGS", Box::new(|_| frame(SETTINGS, ACK, 0, &[]))),
            (
                "WINDOW_UPDATE",
                Box::new(|_| frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1])),
            ),
            (
                "PRIORITY",
                Box::new(|_| frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 7])),
            ),
            ("unknown", Box::new(|_| frame(0x42, 0, 1, b"whatever"))),
            (
                "GOAWAY",
                Box::new(|_| frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0])),
            ),
            // Padded or empty DATA on our stream: nothing of the reply.
            (
                "DATA",
                Box::new(|i| match i {
                    0 => frame(HEADERS, END_HEADERS, 1, &reply_headers()),
                    _ if i % 2 == 0 => frame(DATA, 0, 1, &[]),
                    _ => frame(DATA, PADDED, 1, &[3, 0, 0, 0]),
                }),
            ),
            // Informational replies, over and over.
            (
                "HEADERS",
                Box::new(|_| frame(HEADERS, END_HEADERS, 1, &status_block(b"103"))),
            ),
        ];
        for (name, make) in floods {
            let (result, goaways) = flood(n, make);
            let Err(Error::Calm(what)) = result else {
                panic!("{name}: {result:?}");
            };
            assert!(what.contains(name), "{name}: {what}");
            assert_eq!(goaways, [ENHANCE_YOUR_CALM], "{name}");
        }
        // RST_STREAM and DATA of streams already closed, as a second request reads them.
        for (name, kind, payload) in [
            ("RST_STREAM", RST_STREAM, &[0, 0, 0, 8][..]),
            ("DATA", DATA, &b"0123456789"[..]),
        ] {
            let mut script = frame(SETTINGS, 0, 0, &[]);
            script.extend(trailers_ok(1));
            for _ in 0..n {
                script.extend(frame(kind, 0, 1, payload));
            }
            let (mut conn, written) = connect(script);
            let deadline = Instant::now() + Duration::from_secs(5);
            conn.request(&request(b"x"), deadline).unwrap();
            let result = conn.request(&request(b"x"), deadline);
            let Err(Error::Calm(what)) = result else {
                panic!("{name}: {result:?}");
            };
            assert!(what.contains(name), "{name}: {what}");
            assert_eq!(goaways(&written), [ENHANCE_YOUR_CALM], "{name}");
            // The work done for them was bounded too: one WINDOW_UPDATE per DATA read.
            let updates = frames(&written.lock().unwrap())
                .iter()
                .filter(|f| f.0 == WINDOW_UPDATE)
                .count();
            assert!(updates <= FRAME_BUDGET as usize + 1, "{updates}");
        }
    }

    #[test]
    fn the_budget_is_per_request_and_a_few_control_frames_each_time_are_fine() {
        // Every request reads 100 control frames before its reply: under the budget
        // each time, though ten times over it on the connection.
        let mut script = frame(SETTINGS, 0, 0, &[]);
        for id in (1..20).step_by(2) {
            for _ in 0..50 {
                script.extend(frame(PING, 0, 0, b"12345678"));
                script.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 0, 1]));
            }
            script.extend(trailers_ok(id));
        }
        let (mut conn, written) = connect(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        for _ in 0..10 {
            conn.request(&request(b"x"), deadline).unwrap();
        }
        assert!(conn.usable());
        assert_eq!(goaways(&written), [0u32; 0]);
    }

    #[test]
    fn a_flood_before_the_peers_settings_is_told_to_calm_down_too() {
        let script: Vec<u8> = (0..FRAME_BUDGET + 10)
            .flat_map(|_| frame(PING, 0, 0, b"12345678"))
            .collect();
        let (io, written) = scripted(script);
        let result = Connection::handshake(io, Instant::now() + Duration::from_secs(5));
        assert!(matches!(result, Err(Error::Calm(_))), "{result:?}");
        assert_eq!(goaways(&written), [ENHANCE_YOUR_CALM]);
    }

    #[test]
    fn a_body_sent_through_small_windows_earns_its_window_updates_and_a_trickle_does_not() {
        // Windows of 1 KiB given back 1 KiB at a time: 100 KB needs about 100 stream
        // WINDOW_UPDATEs and 35 of the connection, over the base budget.
        let body = vec![7u8; 100_000];
        let mut script = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 4, 0]);
        let mut sent = 0;
        while sent < body.len() {
            script.extend(frame(WINDOW_UPDATE, 0, 1, &1024u32.to_be_bytes()));
            if sent + 1024 > 65_535 {
                script.extend(frame(WINDOW_UPDATE, 0, 0, &1024u32.to_be_bytes()));
            }
            sent += 1024;
        }
        script.extend(trailers_ok(1));
        let (mut conn, written) = connect(script);
        let response = conn
            .request(&request(&body), Instant::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(response.status, 200);
        let frames = frames(&written.lock().unwrap());
        let data: usize = frames
            .iter()
            .filter(|f| f.0 == DATA)
            .map(|f| f.3.len())
            .sum();
        assert_eq!(data, body.len());
        assert!(frames.iter().filter(|f| f.0 == WINDOW_UPDATE).count() == 0);

        // A window opened a byte at a time: a DATA frame of one byte for each.
        let mut script = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]);
        for _ in 0..1000 {
            script.extend(frame(WINDOW_UPDATE, 0, 1, &1u32.to_be_bytes()));
        }
        let (mut conn, written) = connect(script);
        let result = conn.request(&request(&body), Instant::now() + Duration::from_secs(5));
        assert!(matches!(result, Err(Error::Calm(what)) if what.contains("WINDOW_UPDATE")));
        assert_eq!(goaways(&written), [ENHANCE_YOUR_CALM]);
    }

    #[test]
    fn a_header_block_of_empty_continuations_is_cut_short() {
        let mut after = frame(HEADERS, 0, 1, &reply_headers());
        for _ in 0..10_000 {
            after.extend(frame(CONTINUATION, 0, 1, &[]));
        }
        let (result, goaways) = exchange(b"x", after);
        let Err(Error::Calm(what)) = result else {
            panic!("{result:?}");
        };
        assert!(what.contains("CONTINUATION"), "{what}");
        assert_eq!(goaways, [ENHANCE_YOUR_CALM]);

        // As many as allowed, then END_HEADERS: a reply.
        let mut after = frame(HEADERS, END_STREAM, 1, &[]);
        let mut block = reply_headers();
        block.extend([0x00, 11]);
        block.extend(b"grpc-status");
        block.extend([1, b'0']);
        let pieces: Vec<&[u8]> = block.chunks(2).collect();
        assert!(pieces.len() <= MAX_CONTINUATIONS);
        for (i, piece) in pieces.iter().enumerate() {
            let flags = if i + 1 == pieces.len() {
                END_HEADERS
            } else {
                0
            };
            after.extend(frame(CONTINUATION, flags, 1, piece));
        }
        let (result, _) = exchange(b"x", after);
        assert_eq!(result.unwrap().field("grpc-status"), Some(&b"0"[..]));
    }

    #[test]
    fn an_hpack_bomb_is_refused_by_its_decoded_size() {
        // One field of 4,000 bytes into the dynamic table, then indexed 12,000 times:
        // 48 MB decoded from a block of 16 KiB, were it decoded.
        let mut block = vec![0x40, 0x01, b'b'];
        let mut value = Vec::new();
        string_into(&mut value, &[b'v'; 4000 - 33]);
        block.extend(value);
        block.extend(std::iter::repeat_n(0x80 | 62, 12_000));
        let mut after = Vec::new();
        let mut chunks = block.chunks(MAX_FRAME).peekable();
        let mut kind = HEADERS;
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            after.extend(frame(kind, flags, 1, chunk));
            kind = CONTINUATION;
        }
        let (result, goaways) = exchange(b"x", after);
        let Err(Error::Calm(what)) = result else {
            panic!("{result:?}");
        };
        assert!(what.contains("SETTINGS_MAX_HEADER_LIST_SIZE"), "{what}");
        assert_eq!(goaways, [ENHANCE_YOUR_CALM]);

        // A block longer than any list within the limit is not even decoded.
        let mut after = frame(HEADERS, 0, 1, &vec![0x88; MAX_FRAME]);
        after.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x88; 65]));
        let (result, goaways) = exchange(b"x", after);
        assert!(matches!(result, Err(Error::Calm(_))), "{result:?}");
        assert_eq!(goaways, [ENHANCE_YOUR_CALM]);
    }

    #[test]
    fn a_body_larger_than_max_body_is_refused_and_one_within_it_kept() {
        for (size, refused) in [(MAX_BODY, false), (MAX_BODY + 1, true)] {
            let mut after = frame(HEADERS, END_HEADERS, 1, &reply_headers());
            let body = vec![b'b'; size];
            for chunk in body.chunks(MAX_FRAME) {
                after.extend(frame(DATA, 0, 1, chunk));
            }
            after.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &[0x00, 1, b'a', 1, b'b'],
            ));
            let (result, goaways) = exchange(b"x", after);
            if refused {
                assert!(matches!(result, Err(Error::TooLarge)), "{result:?}");
                assert_eq!(goaways, [ENHANCE_YOUR_CALM]);
            } else {
                assert_eq!(result.unwrap().body.len(), MAX_BODY);
                assert_eq!(goaways, [0u32; 0]);
            }
        }
    }

    #[test]
    fn a_block_that_is_not_hpack_closes_with_compression_error() {
        let after = frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x80]);
        let (result, goaways) = exchange(b"x", after);
        assert!(matches!(result, Err(Error::Compression(_))), "{result:?}");
        assert_eq!(goaways, [COMPRESSION_ERROR]);
    }

    // ------------------------------------------------------------ HPACK

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decode(
        decoder: &mut hpack::Decoder,
        block: &[u8],
    ) -> Result<Vec<(String, String)>, hpack::Refused> {
        let mut fields = Vec::new();
        decoder.decode(block, usize::MAX, |n, v| {
            fields.push((
                String::from_utf8(n.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            ))
        })?;
        Ok(fields)
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn table(decoder: &hpack::Decoder) -> Vec<(String, String)> {
        decoder
            .table()
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.to_vec()).unwrap(),
                    String::from_utf8(v.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    /// RFC 7541 C.3 (without Huffman) and C.4 (the same requests with Huffman).
    #[test]
    fn rfc7541_request_examples_decode() {
        for blocks in [
            [
                "828684410f7777772e6578616d706c652e636f6d",
                "828684be58086e6f2d6361636865",
                "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
            ],
            [
                "828684418cf1e3c2e5f23a6ba0ab90f4ff",
                "828684be5886a8eb10649cbf",
                "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
            ],
        ] {
            let mut decoder = hpack::Decoder::new(hpack::TABLE_SIZE);
            let start = [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ];
            assert_eq!(
                decode(&mut decoder, &hex(blocks[0])).unwrap(),
                pairs(&start)
            );
            assert_eq!(table(&decoder), pairs(&[(":authority", "www.example.com")]));
            let mut second = start.to_vec();
            second.push(("cache-control", "no-cache"));
            assert_eq!(
                decode(&mut decoder, &hex(blocks[1])).unwrap(),
                pairs(&second)
            );
            assert_eq!(
                decode(&mut decoder, &hex(blocks[2])).unwrap(),
                pairs(&[
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":path", "/index.html"),
                    (":authority", "www.example.com"),
                    ("custom-key", "custom-value"),
                ])
            );
            assert_eq!(
                table(&decoder),
                pairs(&[
                    ("custom-key", "custom-value"),
                    ("cache-control", "no-cache"),
                    (":authority", "www.example.com"),
                ])
            );
        }
    }

    /// RFC 7541 C.5 (without Huffman) and C.6 (with), a table of 256 bytes: entries
    /// are evicted.
    #[test]
    fn rfc7541_response_examples_decode_and_evict() {
        for blocks in [
            [
                "4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a323120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d",
                "4803333037c1c0bf",
                "88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a69707738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d6167653d333630303b2076657273696f6e3d31",
            ],
            [
                "488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3",
                "4883640effc1c0bf",
                "88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007",
            ],
        ] {
            let mut decoder = hpack::Decoder::new(256);
            let first = [
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ];
            assert_eq!(
                decode(&mut decoder, &hex(blocks[0])).unwrap(),
                pairs(&first)
            );
            let mut reversed = first.to_vec();
            reversed.reverse();
            assert_eq!(table(&decoder), pairs(&reversed));
            let mut second = first.to_vec();
            second[0] = (":status", "307");
            assert_eq!(
                decode(&mut decoder, &hex(blocks[1])).unwrap(),
                pairs(&second)
            );
            assert_eq!(
                table(&decoder),
                pairs(&[
                    (":status", "307"),
                    ("location", "https://www.example.com"),
                    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                    ("cache-control", "private"),
                ])
            );
            let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
            assert_eq!(
                decode(&mut decoder, &hex(blocks[2])).unwrap(),
                pairs(&[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                    ("location", "https://www.example.com"),
                    ("content-encoding", "gzip"),
                    ("set-cookie", cookie),
                ])
            );
            assert_eq!(
                table(&decoder),
                pairs(&[
                    ("set-cookie", cookie),
                    ("content-encoding", "gzip"),
                    ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ])
            );
        }
    }

    #[test]
    fn every_byte_decodes_from_its_huffman_code() {
        let all: Vec<u8> = (0..=255).collect();
        for text in [
            all.clone(),
            all.iter().rev().copied().collect(),
            b"a".to_vec(),
            vec![],
        ] {
            let mut out = Vec::new();
            hpack::huffman_decode(&hpack::huffman_encode(&text), &mut out, usize::MAX).unwrap();
            assert_eq!(out, text);
        }
        // The codes of Appendix B, from a few rows of the table.
        let codes = hpack::codes();
        assert_eq!(codes[b'0' as usize], 0x0);
        assert_eq!(codes[b' ' as usize], 0x14);
        assert_eq!(codes[b'a' as usize], 0x3);
        assert_eq!(codes[0], 0x1ff8);
        assert_eq!(codes[255], 0x3ffffee);
        assert_eq!(codes[256], 0x3fff_ffff);
    }

    #[test]
    fn invalid_huffman_strings_are_refused() {
        let decode = |bytes: &[u8]| hpack::huffman_decode(bytes, &mut Vec::new(), usize::MAX);
        let invalid = |what: &str| {
            Err(hpack::Refused::Invalid(match what {
                "eos" => "EOS in a Huffman string",
                _ => "a Huffman string badly padded",
            }))
        };
        // EOS (30 ones), then padding: refused as EOS.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), invalid("eos"));
        // 'a' (00011) then the padding 111: fine; 8 bits of padding more: refused.
        assert_eq!(decode(&[0x1f]), Ok(()));
        assert_eq!(decode(&[0x1f, 0xff]), invalid("padding"));
        // A whole byte of padding alone.
        assert_eq!(decode(&[0xff]), invalid("padding"));
        // Padding not all ones: 'a' then 110, or 000.
        assert_eq!(decode(&[0x1e]), invalid("padding"));
        assert_eq!(decode(&[0x18]), invalid("padding"));
        // A code cut short is not a padding: '!' (1111111000, 10 bits) without its end.
        assert_eq!(decode(&[0xfe]), invalid("padding"));
        // Through a whole block.
        let mut decoder = hpack::Decoder::new(hpack::TABLE_SIZE);
        assert_eq!(
            decode_block(&mut decoder, &[0x00, 0x81, 0xff, 0x81, 0x1f]),
            invalid("padding").map(|()| 0)
        );
    }

    fn decode_block(decoder: &mut hpack::Decoder, block: &[u8]) -> Result<usize, hpack::Refused> {
        let mut n = 0;
        decoder.decode(block, usize::MAX, |_, _| n += 1)?;
        Ok(n)
    }

    #[test]
    fn integers_too_large_indexes_beyond_the_tables_and_bad_updates_are_refused() {
        let invalid = |what: &'static str| Err(hpack::Refused::Invalid(what));
        let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
        // An index of 5 continuation bytes, and one of 2^28 + 127.
        assert_eq!(
            decode_block(&mut d, &[0xff, 0x80, 0x80, 0x80, 0x80, 0x01]),
            invalid("an integer too large")
        );
        assert_eq!(
            decode_block(&mut d, &[0xff, 0x80, 0x80, 0x80, 0x7f]),
            invalid("an index beyond the tables")
        );
        // A string length far beyond the block.
        assert_eq!(
            decode_block(&mut d, &[0x00, 0x7f, 0xff, 0xff, 0xff, 0x7f]),
            invalid("a header block cut short")
        );
        let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
        assert_eq!(
            decode_block(&mut d, &[0x80]),
            invalid("an index beyond the tables")
        );
        assert_eq!(
            decode_block(&mut d, &[0xbe]),
            invalid("an index beyond the tables")
        );
        assert_eq!(decode_block(&mut d, &[0x88]), Ok(1));
        // Size updates: up to 4096 at the start, at most two.
        assert_eq!(decode_block(&mut d, &[0x3f, 0xe1, 0x1f, 0x88]), Ok(1));
        assert_eq!(
            decode_block(&mut d, &[0x3f, 0xe2, 0x1f]),
            invalid("a table size update above the limit")
        );
        assert_eq!(
            decode_block(&mut d, &[0x88, 0x20]),
            invalid("a table size update out of place")
        );
        assert_eq!(
            decode_block(&mut d, &[0x20, 0x20, 0x20, 0x88]),
            invalid("a table size update out of place")
        );
        // A size update to 0 empties the table.
        let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
        assert_eq!(decode_block(&mut d, &[0x40, 1, b'a', 1, b'b', 0xbe]), Ok(2));
        assert_eq!(decode_block(&mut d, &[0x20, 0x88]), Ok(1));
        assert_eq!(
            decode_block(&mut d, &[0xbe]),
            invalid("an index beyond the tables")
        );
    }

    #[test]
    fn decoding_stops_as_soon_as_the_list_passes_the_limit() {
        // A 4,000-byte entry indexed over and over: at most 4 fit in 16 KiB.
        let mut block = vec![0x40, 0x01, b'b'];
        string_into(&mut block, &[b'v'; 3967]);
        block.extend(std::iter::repeat_n(0xbe, 60_000));
        let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
        let mut fields = 0;
        let result = d.decode(&block, MAX_HEADER_LIST, |_, _| fields += 1);
        assert_eq!(result, Err(hpack::Refused::TooLarge));
        assert_eq!(fields, 4);
        // A literal or Huffman string beyond the limit is refused before it is copied.
        for huffman in [false, true] {
            let mut block = vec![0x00, 0x01, b'n'];
            let text = vec![b'a'; MAX_HEADER_LIST];
            let coded = if huffman {
                hpack::huffman_encode(&text)
            } else {
                text.clone()
            };
            integer_into(&mut block, if huffman { 0x80 } else { 0 }, 7, coded.len());
            block.extend(coded);
            let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
            let result = d.decode(&block, MAX_HEADER_LIST, |_, _| panic!("no field"));
            assert_eq!(result, Err(hpack::Refused::TooLarge));
        }
        // Exactly at the limit: decoded.
        let mut block = vec![0x00, 0x01, b'n'];
        string_into(&mut block, &vec![b'a'; MAX_HEADER_LIST - 33]);
        let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
        assert_eq!(d.decode(&block, MAX_HEADER_LIST, |_, _| {}), Ok(()));
    }

    /// Prints what decoding a maximal header block costs (not a timed assertion: the
    /// figure is for the reader). `cargo test --release --lib hpack_decode_cost --
    /// --nocapture` for the figures of the release build.
    #[test]
    fn hpack_decode_cost() {
        // Many short Huffman strings (the worst case for a decoder that sets up per
        // string), long ones, and the bomb; at the largest block accepted, and at
        // 64 KiB with no limit on the list (to compare with other decoders).
        let short = |size: usize| {
            let mut block = Vec::new();
            let (x, y) = (hpack::huffman_encode(b"x"), hpack::huffman_encode(b"y"));
            while block.len() + 5 <= size {
                block.extend([0x00, 0x81, x[0], 0x81, y[0]]);
            }
            block
        };
        let long = |size: usize| {
            let text = hpack::huffman_encode(&b"abcdefghijklmnopqrstuvwxyz0123456789".repeat(3));
            let mut block = Vec::new();
            while block.len() + 3 + 2 + text.len() <= size {
                block.extend([0x00, 0x81, hpack::huffman_encode(b"k")[0]]);
                integer_into(&mut block, 0x80, 7, text.len());
                block.extend(&text);
            }
            block
        };
        let bomb = |size: usize| {
            let mut block = vec![0x40, 0x01, b'b'];
            string_into(&mut block, &[b'v'; 3967]);
            block.resize(size, 0xbe);
            block
        };
        for (name, make) in [
            ("short Huffman strings", &short as &dyn Fn(usize) -> Vec<u8>),
            ("long Huffman strings", &long),
            ("bomb", &bomb),
        ] {
            for (size, limit) in [(MAX_HEADER_BLOCK, MAX_HEADER_LIST), (65_536, usize::MAX)] {
                let block = make(size);
                let mut best = Duration::MAX;
                let mut decoded = 0;
                for _ in 0..20 {
                    let mut d = hpack::Decoder::new(hpack::TABLE_SIZE);
                    let mut size = 0;
                    let started = Instant::now();
                    let result = d.decode(&block, limit.min(64 << 20), |n, v| {
                        size += n.len() + v.len() + 32
                    });
                    best = best.min(started.elapsed());
                    decoded = size;
                    assert!(matches!(result, Ok(()) | Err(hpack::Refused::TooLarge)));
                }
                println!(
                    "HPACK decode, {name}: {} bytes -> {decoded} bytes decoded (list limit {}): {:?}",
                    block.len(),
                    if limit == usize::MAX {
                        "64 MiB".to_string()
                    } else {
                        limit.to_string()
                    },
                    best
                );
            }
        }
    }
}
