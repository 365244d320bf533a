//! What the peer sends, frame by frame, while a request waits for its reply: the
//! reply's HEADERS (informational ones skipped), DATA and trailers, header blocks with
//! their CONTINUATION frames and their decoding, and the control frames (SETTINGS,
//! PING, GOAWAY, RST_STREAM, WINDOW_UPDATE), each checked as RFC 9113 says.

use std::time::Instant;

use super::budget::Budget;
use super::frame::{Frame, frame_into, u32_at, u32_of, unpad};
use super::{
    ACK, CONTINUATION, Connection, DATA, END_HEADERS, END_STREAM, Error, GOAWAY, HEADERS, Io,
    MAX_BODY, MAX_CONTINUATIONS, MAX_HEADER_BLOCK, MAX_HEADER_LIST, MAX_WINDOW, PING,
    PRIORITY_FLAG, PUSH_PROMISE, RST_STREAM, Response, SETTINGS, Stream, WINDOW_UPDATE, hpack,
};

/// One header block, decoded.
#[derive(Default)]
struct Decoded {
    status: Option<u16>,
    fields: Vec<(String, Vec<u8>)>,
}

impl<S: Io> Connection<S> {
    /// A stream in the "idle" state (RFC 9113 5.1): one we never opened (an even id,
    /// or one at or above the next we would open). Stream 0 is not a stream.
    fn idle(&self, id: u32) -> bool {
        id != 0 && (id.is_multiple_of(2) || id >= self.next_stream)
    }

    /// Handles one frame read, `stream` the request waiting for its reply (none
    /// while the connection opens).
    pub(super) fn on_frame(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::request::string_into;
    use crate::h2::testing::*;
    use crate::h2::*;

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
}
