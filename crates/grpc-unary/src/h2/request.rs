//! A request sent on a new stream: its header block (`:method POST` and `:scheme`
//! from the static table, the rest as literals never indexed, so the peer's HPACK
//! table keeps nothing of ours), its HEADERS and CONTINUATION frames, then its body in
//! DATA frames within the peer's windows, what the peer sends meanwhile read until
//! the reply is whole.

use std::time::Instant;

use super::budget::Budget;
use super::frame::frame_into;
use super::{
    CANCEL, CONTINUATION, Connection, DATA, END_HEADERS, END_STREAM, Error, HEADERS, Io,
    MAX_WINDOW, NO_ERROR, RST_STREAM, Request, Response, Stream,
};

impl<S: Io> Connection<S> {
    /// Opens a stream for `request`, sends it, and reads until its reply is whole.
    pub(super) fn exchange(
        &mut self,
        request: &Request,
        deadline: Instant,
    ) -> Result<Response, Error> {
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

pub(super) fn string_into(out: &mut Vec<u8>, s: &[u8]) {
    integer_into(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix (`n` is 4 or 7), after the `first` bits
/// (RFC 7541, 5.1).
pub(super) fn integer_into(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
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
    use crate::h2::testing::*;
    use crate::h2::*;

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
}
