//! Entry points for the fuzzer (cargo-fuzz targets `h2_client`, `hpack`, `grpc_reply`)
//! and for the tests that replay its corpus: each takes arbitrary bytes, runs what a
//! server's bytes reach, and must return without a panic, in time and memory bounded
//! by the input. Not part of the crate's API.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::h2::{self, Connection, Io, hpack};
use crate::{MAX_BODY, MAX_HEADER_LIST, MAX_PEER_TEXT, Secrets, reply};

/// A server whose every byte is `incoming`; what the client writes is dropped.
struct Scripted(io::Cursor<Vec<u8>>);

impl Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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

/// The HTTP/2 client against a server that sends `data`: the handshake, then one
/// request (a body of 100 bytes, so that small windows hold it back), its reply
/// read. A reply is final (not 1xx), within the body limit.
pub fn h2_client(data: &[u8]) {
    if let Ok(response) = exchange(data) {
        assert!(
            (200..=599).contains(&response.status),
            "{}",
            response.status
        );
        assert!(response.body.len() <= MAX_BODY);
        let _ = response.field("grpc-status");
    }
}

/// The handshake and one request against a server that sends `data`.
fn exchange(data: &[u8]) -> Result<h2::Response, crate::Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let server = Scripted(io::Cursor::new(data.to_vec()));
    let mut connection = Connection::handshake(server, deadline)?;
    let request = h2::Request {
        scheme: "http",
        authority: "collector:4317",
        path: "/svc/Method",
        headers: &[("content-type", b"application/grpc"), ("te", b"trailers")],
        body: &[7; 100],
    };
    connection.request(&request, deadline)
}

/// The HPACK decoder, on header blocks one after the other with one table: the first
/// byte sets the table's size (0: 4,096 bytes, as a connection has; n: 16 n bytes);
/// then each block is a 2-byte big-endian length and that many bytes (the last one
/// what is left). The decoded list never passes the limit.
pub fn hpack(data: &[u8]) {
    let Some((&size, mut rest)) = data.split_first() else {
        return;
    };
    let size = match size {
        0 => hpack::TABLE_SIZE,
        n => usize::from(n) * 16,
    };
    let mut decoder = hpack::Decoder::new(size);
    while !rest.is_empty() {
        let (block, tail) = match rest {
            [a, b, tail @ ..] => {
                tail.split_at(usize::from(u16::from_be_bytes([*a, *b])).min(tail.len()))
            }
            _ => (rest, &[][..]),
        };
        rest = tail;
        let mut list = 0;
        let result = decoder.decode(block, MAX_HEADER_LIST, |name, value| {
            list += name.len() + value.len() + 32;
        });
        assert!(list <= MAX_HEADER_LIST, "{list}");
        if matches!(result, Err(hpack::Refused::Invalid(_))) {
            // The table is no longer known: a connection is closed there.
            return;
        }
    }
}

/// Reading a reply: `data` split at each 0xff byte into the body, then the values of
/// `grpc-status`, `grpc-message`, `grpc-status-details-bin` and a secret of the call;
/// the fields are trailers (or headers, when the body starts with 0x01 — a
/// trailers-only reply). The message is scrubbed: bounded, no control character, no
/// secret; and each decoder runs on the whole input too.
pub fn grpc_reply(data: &[u8]) {
    let mut parts = data.split(|&b| b == 0xff);
    let mut next = || parts.next().unwrap_or_default();
    let (body, status, message, details, secret) = (next(), next(), next(), next(), next());
    let mut secrets = Secrets::default();
    secrets.add(secret);
    let fields: Vec<(String, Vec<u8>)> = [
        ("grpc-status", status),
        ("grpc-message", message),
        ("grpc-status-details-bin", details),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(n, v)| (n.to_string(), v.to_vec()))
    .collect();
    let trailers_only = body.first() == Some(&1);
    let response = h2::Response {
        status: 200,
        headers: if trailers_only {
            fields.clone()
        } else {
            Vec::new()
        },
        body: body.to_vec(),
        trailers: if trailers_only { Vec::new() } else { fields },
    };
    if let Ok(reply) = reply::decode(response, &secrets) {
        assert!(reply.message.len() <= MAX_PEER_TEXT);
        assert!(!reply.message.chars().any(char::is_control));
        // A secret is never shown; unless it holds a character of what scrubbing
        // writes itself (REDACTED, ':', "..."), whose text could spell it anew.
        let shown = String::from_utf8_lossy(secret);
        let plain = |c: char| c.is_ascii_graphic() && !"REDACT:.".contains(c);
        if !shown.is_empty() && shown.chars().all(plain) {
            assert!(!reply.message.contains(&*shown), "a secret shown");
        }
        assert!(reply.body.len() <= body.len());
        let _ = crate::code_name(reply.code);
    }
    let _ = reply::retry_delay(data);
    let text = reply::percent_decode(data);
    assert!(secrets.scrub(&text).len() <= MAX_PEER_TEXT);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds reach what they are for: a reply, not only no panic.
    #[test]
    fn the_seeds_are_read_as_replies() {
        let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fuzz/corpus");
        let read = |path: &str| std::fs::read(format!("{corpus}/{path}")).unwrap();
        // A tonic server's bytes, as it answered an OTLP export.
        let response = exchange(&read("h2_client/tonic_ok")).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.field("grpc-status"), Some(&b"0"[..]));
        let reply = reply::decode(response, &Secrets::default()).unwrap();
        assert!(String::from_utf8_lossy(&reply.body).contains("two spans too old"));
        let response = exchange(&read("h2_client/tonic_retry_info")).unwrap();
        let mut secrets = Secrets::default();
        secrets.add(b"Bearer s3cret-token");
        let reply = reply::decode(response, &secrets).unwrap();
        assert_eq!(reply.code, 8);
        assert_eq!(reply.retry_delay, Some(Duration::from_millis(1500)));
        assert_eq!(reply.message, "slow down: authorization=REDACTED");
        let response = exchange(&read("h2_client/flow_control")).unwrap();
        assert_eq!(
            (response.status, &response.body[..]),
            (200, &b"\0\0\0\0\x02hi"[..])
        );
        assert_eq!(response.field("grpc-message"), Some(&b"fine%20thanks"[..]));
        assert!(matches!(
            exchange(&read("h2_client/goaway")),
            Err(crate::Error::Refused { .. })
        ));
        // RFC 7541 C.3's first block decodes; every seed runs through the entry points.
        let mut fields = 0;
        let block = &read("hpack/rfc7541_c3")[3..23];
        hpack::Decoder::new(hpack::TABLE_SIZE)
            .decode(block, MAX_HEADER_LIST, |_, _| fields += 1)
            .unwrap();
        assert_eq!(fields, 4);
        for (target, run) in [
            ("h2_client", h2_client as fn(&[u8])),
            ("hpack", hpack),
            ("grpc_reply", grpc_reply),
        ] {
            for entry in std::fs::read_dir(format!("{corpus}/{target}")).unwrap() {
                run(&std::fs::read(entry.unwrap().path()).unwrap());
            }
        }
    }
}
