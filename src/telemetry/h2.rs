//! A small synchronous HTTP/2 client (RFC 9113) for what an OTLP/gRPC export needs:
//! one request at a time on a connection kept open, on the caller's thread.
//!
//! What it does: the connection preface and SETTINGS (acknowledged both ways); flow
//! control both ways (a body larger than the peer's windows waits for WINDOW_UPDATE,
//! and every DATA frame read is given back at once); PING answered; GOAWAY (a stream
//! the peer did not process is reported as such, so it can be sent again on a new
//! connection; no new stream after it), RST_STREAM, CONTINUATION, padding, and
//! replies that end in their HEADERS (trailers-only). HPACK: replies are decoded with
//! the `loona-hpack` decoder (Huffman and the dynamic table); requests are written as
//! literals never indexed, so the peer's table is never used and nothing sent is kept
//! by it.
//!
//! Bounded: every read and write runs against the caller's deadline (socket timeouts
//! set to what is left before each call), so a peer that never answers or trickles
//! bytes costs at most that. Frames larger than 16 KiB, header blocks larger than
//! 64 KiB and bodies larger than [`MAX_BODY`] are refused.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The connection preface a client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload read: our SETTINGS_MAX_FRAME_SIZE, the default.
const MAX_FRAME: usize = 16_384;
/// The largest header block accepted (HEADERS and its CONTINUATIONs together).
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest response body kept.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The window every stream starts with until the peer's SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;

// Frame types.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
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
const PRIORITY: u8 = 0x20;

// Error codes sent.
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;

/// A byte stream whose reads and writes can be bounded in time.
pub trait Io: Read + Write + Send {
    /// Sets the read and write timeouts of the socket underneath.
    fn set_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl Io for TcpStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// Why a request got no reply.
#[derive(Debug)]
pub enum Error {
    /// The socket failed or closed, or the deadline passed.
    Io(io::Error),
    /// The peer broke the protocol; the connection is closed.
    Protocol(&'static str),
    /// The peer said GOAWAY before it took this stream: it was not processed, and can
    /// be sent again on a new connection.
    Refused { code: u32 },
    /// The peer reset the stream with this error code.
    Reset(u32),
    /// The reply's body is larger than [`MAX_BODY`].
    TooLarge,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) if e.kind() == io::ErrorKind::TimedOut => f.write_str("timed out"),
            Error::Io(e) => write!(f, "{e}"),
            Error::Protocol(what) => write!(f, "HTTP/2 protocol error: {what}"),
            Error::Refused { code } => {
                write!(
                    f,
                    "connection going away (GOAWAY code {code}) before the request"
                )
            }
            Error::Reset(code) => write!(f, "stream reset by the peer (RST_STREAM code {code})"),
            Error::TooLarge => write!(f, "reply larger than {MAX_BODY} bytes"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io(e)
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

/// A reply: its status, header fields, body and trailer fields.
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

/// One HTTP/2 connection.
pub struct Connection<S: Io> {
    io: S,
    read_buf: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
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
            decoder: loona_hpack::Decoder::new(),
            next_stream: 1,
            send_window: DEFAULT_WINDOW,
            peer_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            going_away: false,
            broken: false,
        };
        conn.decoder.set_max_allowed_table_size(4096);
        let mut hello = PREFACE.to_vec();
        // SETTINGS_ENABLE_PUSH = 0; the other settings keep their defaults.
        frame_into(&mut hello, SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
        conn.write(&hello, deadline)?;
        loop {
            let frame = conn.read_frame(deadline)?;
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => {
                    conn.on_settings(&frame, None, deadline)?;
                    return Ok(conn);
                }
                SETTINGS | WINDOW_UPDATE | PING => conn.on_frame(frame, None, deadline)?,
                GOAWAY => {
                    conn.on_frame(frame, None, deadline)?;
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
            Err(Error::Protocol(_)) => {
                self.broken = true;
                // Best effort: say why before closing.
                let mut goaway = Vec::new();
                frame_into(&mut goaway, GOAWAY, 0, 0, &[0; 8]);
                goaway[9 + 7] = PROTOCOL_ERROR as u8;
                let _ = self.write(&goaway, Instant::now() + Duration::from_millis(100));
            }
            Err(_) => self.broken = true,
        }
        result
    }

    fn exchange(&mut self, request: &Request, deadline: Instant) -> Result<Response, Error> {
        let id = self.next_stream;
        self.next_stream += 2;
        let mut stream = Stream {
            id,
            send_window: self.peer_window,
            response: None,
            done: false,
        };
        let block = encode_headers(request);
        let mut out = Vec::with_capacity(block.len() + 32);
        let end = if request.body.is_empty() {
            END_STREAM
        } else {
            0
        };
        // HEADERS, then CONTINUATION frames for what does not fit in one frame.
        let mut chunks = block.chunks(self.peer_max_frame).peekable();
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
        let mut sent = 0;
        let body = request.body;
        while !stream.done {
            if sent < body.len() {
                let n = (body.len() - sent)
                    .min(self.peer_max_frame)
                    .min(self.send_window.max(0) as usize)
                    .min(stream.send_window.max(0) as usize);
                if n > 0 {
                    let last = sent + n == body.len();
                    out.clear();
                    let flags = if last { END_STREAM } else { 0 };
                    frame_into(&mut out, DATA, flags, id, &body[sent..sent + n]);
                    self.write(&out, deadline)?;
                    sent += n;
                    self.send_window -= n as i64;
                    stream.send_window -= n as i64;
                    continue;
                }
            }
            // Nothing can be sent: read what the peer says (a WINDOW_UPDATE, the reply).
            let frame = self.read_frame(deadline)?;
            self.on_frame(frame, Some(&mut stream), deadline)?;
        }
        if sent < body.len() {
            // The peer replied before it had the whole body: it wants no more.
            let mut rst = Vec::new();
            frame_into(&mut rst, RST_STREAM, 0, id, &CANCEL.to_be_bytes());
            self.write(&rst, deadline)?;
        }
        let response = stream.response.take().unwrap_or_default();
        if response.status == 0 {
            return Err(Error::Protocol("a reply without :status"));
        }
        Ok(response)
    }

    fn on_frame(
        &mut self,
        frame: Frame,
        stream: Option<&mut Stream>,
        deadline: Instant,
    ) -> Result<(), Error> {
        let ours = stream.as_ref().is_some_and(|s| s.id == frame.stream);
        match frame.kind {
            DATA => {
                if frame.stream == 0 {
                    return Err(Error::Protocol("DATA on stream 0"));
                }
                let len = frame.payload.len() as u32;
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
                    if response.body.len() + data.len() > MAX_BODY {
                        return Err(Error::TooLarge);
                    }
                    response.body.extend_from_slice(data);
                    stream.done |= frame.flags & END_STREAM != 0;
                }
            }
            HEADERS => {
                let mut flags = frame.flags;
                let mut block = unpad(&frame.payload, flags)?;
                if flags & PRIORITY != 0 {
                    block = block.get(5..).ok_or(Error::Protocol("HEADERS too short"))?;
                }
                let mut block = block.to_vec();
                while flags & END_HEADERS == 0 {
                    let next = self.read_frame(deadline)?;
                    if next.kind != CONTINUATION || next.stream != frame.stream {
                        return Err(Error::Protocol("a header block not continued"));
                    }
                    if block.len() + next.payload.len() > MAX_HEADER_BLOCK {
                        return Err(Error::Protocol("a header block too large"));
                    }
                    block.extend_from_slice(&next.payload);
                    flags = (flags & END_STREAM) | next.flags;
                }
                // Every block is decoded, ours or not: the decoder's table depends on it.
                let mut fields = Vec::new();
                let mut status = None;
                self.decoder
                    .decode_with_cb(&block, |name: Cow<[u8]>, value: Cow<[u8]>| {
                        if &*name == b":status" {
                            status = std::str::from_utf8(&value)
                                .ok()
                                .and_then(|s| s.parse().ok());
                        } else if !name.starts_with(b":") {
                            let name = String::from_utf8_lossy(&name).into_owned();
                            fields.push((name, value.into_owned()));
                        }
                    })
                    .map_err(|_| Error::Protocol("an HPACK block that does not decode"))?;
                if let Some(stream) = stream.filter(|_| ours) {
                    match &mut stream.response {
                        None => {
                            stream.response = Some(Response {
                                status: status.ok_or(Error::Protocol("a reply without :status"))?,
                                headers: fields,
                                ..Response::default()
                            });
                        }
                        Some(response) => response.trailers = fields,
                    }
                    stream.done |= frame.flags & END_STREAM != 0;
                }
            }
            RST_STREAM => {
                let code = u32_at(&frame.payload, 0)?;
                if ours {
                    return Err(Error::Reset(code));
                }
            }
            SETTINGS => self.on_settings(&frame, stream, deadline)?,
            PUSH_PROMISE => return Err(Error::Protocol("PUSH_PROMISE with push disabled")),
            PING => {
                if frame.payload.len() != 8 {
                    return Err(Error::Protocol("PING not 8 bytes"));
                }
                if frame.flags & ACK == 0 {
                    let mut pong = Vec::new();
                    frame_into(&mut pong, PING, ACK, 0, &frame.payload);
                    self.write(&pong, deadline)?;
                }
            }
            GOAWAY => {
                let last = u32_at(&frame.payload, 0)? & 0x7fff_ffff;
                let code = u32_at(&frame.payload, 4)?;
                self.going_away = true;
                if stream.is_some_and(|s| s.id > last) {
                    return Err(Error::Refused { code });
                }
            }
            WINDOW_UPDATE => {
                let increment = i64::from(u32_at(&frame.payload, 0)? & 0x7fff_ffff);
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
                *window += increment;
                if *window > MAX_WINDOW {
                    return Err(Error::Protocol("a window above 2^31-1"));
                }
            }
            CONTINUATION => return Err(Error::Protocol("CONTINUATION without HEADERS")),
            // PRIORITY and unknown frame types are ignored.
            _ => {}
        }
        Ok(())
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
            return Ok(());
        }
        if !frame.payload.len().is_multiple_of(6) {
            return Err(Error::Protocol("SETTINGS not a multiple of 6 bytes"));
        }
        let mut stream = stream;
        for setting in frame.payload.chunks(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = u32_at(setting, 2)?;
            match id {
                // SETTINGS_INITIAL_WINDOW_SIZE: changes the open stream's window too.
                0x4 => {
                    let value = i64::from(value);
                    if value > MAX_WINDOW {
                        return Err(Error::Protocol("SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1"));
                    }
                    if let Some(stream) = stream.as_deref_mut() {
                        stream.send_window += value - self.peer_window;
                    }
                    self.peer_window = value;
                }
                // SETTINGS_MAX_FRAME_SIZE.
                0x5 => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(Error::Protocol("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    // Our frames stay within 16 KiB whatever the peer allows.
                    self.peer_max_frame = (value as usize).min(MAX_FRAME);
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
                Ok(n) => bytes = &bytes[n..],
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
        let head = &self.read_buf[..9];
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let kind = head[3];
        let flags = head[4];
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            if self.read_buf.starts_with(b"HTTP/1.") {
                return Err(Error::Protocol(
                    "the server answered in HTTP/1.1: not an OTLP/gRPC endpoint (4318 is OTLP/HTTP's port)",
                ));
            }
            return Err(Error::Protocol(
                "a frame larger than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        self.fill(9 + len, deadline)?;
        let payload = self.read_buf[9..9 + len].to_vec();
        self.read_buf.drain(..9 + len);
        Ok(Frame {
            kind,
            flags,
            stream,
            payload,
        })
    }

    /// Reads until `n` bytes are buffered.
    fn fill(&mut self, n: usize, deadline: Instant) -> Result<(), Error> {
        let mut chunk = [0u8; 8192];
        while self.read_buf.len() < n {
            self.io.set_timeout(left(deadline)?)?;
            match self.io.read(&mut chunk) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(got) => self.read_buf.extend_from_slice(&chunk[..got]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(timed_out(e).into()),
            }
        }
        Ok(())
    }
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

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(Error::Protocol("a frame too short"))
}

/// The payload without its padding (PADDED flag).
fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], Error> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = *payload.first().ok_or(Error::Protocol("padding missing"))? as usize;
    if pad + 1 > payload.len() {
        return Err(Error::Protocol("padding longer than the frame"));
    }
    Ok(&payload[1..payload.len() - pad])
}

/// Appends one frame.
fn frame_into(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
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

/// An HPACK integer with an `n`-bit prefix, after the `first` bits (RFC 7541, 5.1).
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

    fn connect(script: Vec<u8>) -> (Connection<Scripted>, Arc<Mutex<Vec<u8>>>) {
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Scripted {
            incoming: io::Cursor::new(script),
            written: written.clone(),
        };
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

    /// `:status: 200` (static index 8), then `grpc-status: 0` as a Huffman-coded
    /// literal with incremental indexing, then the same from the dynamic table.
    fn reply_headers() -> Vec<u8> {
        vec![0x88]
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
        let (mut conn, _) = connect(script);
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(matches!(
            conn.request(&request(b"x"), deadline),
            Err(Error::Io(_))
        ));
        assert!(!conn.usable());

        let mut script = frame(SETTINGS, 0, 0, &[]);
        script.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x88]));
        let (mut conn, _) = connect(script);
        assert!(matches!(
            conn.request(&request(b"x"), deadline),
            Err(Error::Protocol(_))
        ));
        assert!(!conn.usable());
    }

    #[test]
    fn an_http1_server_is_named_as_such() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let io = Scripted {
            incoming: io::Cursor::new(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
            written,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let Err(Error::Protocol(what)) = Connection::handshake(io, deadline) else {
            panic!("not a protocol error");
        };
        assert!(what.contains("HTTP/1.1"), "{what}");
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
        let mut decoder = loona_hpack::Decoder::new();
        let fields = decoder.decode(&block).unwrap();
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
        let mut long = Vec::new();
        integer_into(&mut long, 0, 7, 1337);
        assert_eq!(long, [127, 0xba, 0x09]);
    }
}
