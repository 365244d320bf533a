//! Test helpers shared by the tests of the connection's modules: a scripted peer,
//! the frames a script is made of, and what the client wrote back.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::frame::frame_into;
use super::request::string_into;
use super::{
    Connection, END_HEADERS, END_STREAM, Error, GOAWAY, HEADERS, Io, PREFACE, Request, Response,
    SETTINGS,
};

/// A scripted peer: what it "sends" is read from `incoming`; what the client
/// writes is kept in `written`.
pub(super) struct Scripted {
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

pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_into(&mut out, kind, flags, stream, payload);
    out
}

/// The frames in what the client wrote, after the preface.
pub(super) fn frames(written: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
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
pub(super) fn goaways(written: &Mutex<Vec<u8>>) -> Vec<u32> {
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

pub(super) fn scripted(script: Vec<u8>) -> (Scripted, Arc<Mutex<Vec<u8>>>) {
    let written = Arc::new(Mutex::new(Vec::new()));
    let io = Scripted {
        incoming: io::Cursor::new(script),
        written: written.clone(),
    };
    (io, written)
}

pub(super) fn connect(script: Vec<u8>) -> (Connection<Scripted>, Arc<Mutex<Vec<u8>>>) {
    let (io, written) = scripted(script);
    let deadline = Instant::now() + Duration::from_secs(5);
    (Connection::handshake(io, deadline).unwrap(), written)
}

pub(super) fn request(body: &[u8]) -> Request<'_> {
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
pub(super) fn exchange(body: &[u8], after: Vec<u8>) -> (Result<Response, Error>, Vec<u32>) {
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
pub(super) fn reply_headers() -> Vec<u8> {
    vec![0x88]
}

/// A header block of `:status` `status`, as a literal with the name indexed.
pub(super) fn status_block(status: &[u8]) -> Vec<u8> {
    let mut block = vec![0x08];
    string_into(&mut block, status);
    block
}

/// Trailers: `custom-key: custom-value` Huffman-coded and indexed (RFC 7541,
/// C.4.1's strings), `grpc-status: 0` as a raw literal, then the first field again
/// from the dynamic table (index 62).
pub(super) fn grpc_status_ok_huffman() -> Vec<u8> {
    let mut block = vec![0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f];
    block.extend([0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf]);
    block.push(0x00);
    string_into(&mut block, b"grpc-status");
    string_into(&mut block, b"0");
    block.push(0x80 | 62);
    block
}

pub(super) fn trailers_ok(id: u32) -> Vec<u8> {
    let mut block = reply_headers();
    block.push(0x00);
    string_into(&mut block, b"grpc-status");
    string_into(&mut block, b"0");
    frame(HEADERS, END_HEADERS | END_STREAM, id, &block)
}
