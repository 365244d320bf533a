//! A gRPC reply read from an HTTP/2 one: its status, message, RetryInfo and response
//! message.

use std::time::Duration;

use crate::h2;
use crate::{Error, Secrets};

/// A gRPC reply: what the server answered the call, OK or not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    /// The status code (`grpc-status`, from the trailers or a trailers-only reply):
    /// 0 is OK; [`code_name`] names it.
    pub code: u32,
    /// `grpc-message`, percent-decoded, then scrubbed ([`Secrets::scrub`]: secrets,
    /// control and bidirectional characters out, 512 bytes at most); empty without
    /// one.
    pub message: String,
    /// The delay a `google.rpc.RetryInfo` in `grpc-status-details-bin` asks for (at
    /// most an hour), if any.
    pub retry_delay: Option<Duration>,
    /// The response message (the body after its 5-byte prefix), as the server
    /// serialized it; empty when compressed (never asked for) or when there is none.
    pub body: Vec<u8>,
}

/// The gRPC reply of an HTTP/2 one.
pub(crate) fn decode(response: h2::Response, secrets: &Secrets) -> Result<Reply, Error> {
    if response.status != 200 {
        return Err(Error::Http(response.status));
    }
    let code = response
        .field("grpc-status")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or(Error::NoStatus)?;
    let retry_delay = response
        .field("grpc-status-details-bin")
        .and_then(retry_delay);
    let message = response
        .field("grpc-message")
        .map(|text| secrets.scrub(&percent_decode(text)))
        .unwrap_or_default();
    let mut body = response.body;
    if body.len() >= 5 && body.first() == Some(&0) {
        // In place, without a copy.
        body.drain(..5);
    } else {
        body = Vec::new();
    }
    Ok(Reply {
        code,
        message,
        retry_delay,
        body,
    })
}

/// The name of a gRPC status code: `UNAVAILABLE` for 14.
pub fn code_name(code: u32) -> &'static str {
    [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ]
    .get(code as usize)
    .copied()
    .unwrap_or("an unknown code")
}

/// grpc-message is percent-encoded (its length is bounded by the header list's).
pub(crate) fn percent_decode(value: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if let (b'%', &[h, l, ..]) = (b, tail)
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push(h << 4 | l);
            rest = tail.get(2..).unwrap_or_default();
        } else {
            out.push(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The delay of the RetryInfo in a `grpc-status-details-bin` (a base64
/// google.rpc.Status whose details hold google.rpc.RetryInfo), if any.
pub(crate) fn retry_delay(value: &[u8]) -> Option<Duration> {
    let status = base64_decode(value)?;
    for detail in protobuf_fields(&status)? {
        let (3, Field::Bytes(any)) = detail else {
            continue;
        };
        let any = protobuf_fields(any)?;
        let is_retry_info = any.iter().any(
            |f| matches!(f, (1, Field::Bytes(url)) if url.ends_with(b"/google.rpc.RetryInfo")),
        );
        if !is_retry_info {
            continue;
        }
        let info = any.iter().find_map(|f| match f {
            (2, Field::Bytes(info)) => Some(*info),
            _ => None,
        })?;
        let Some((1, Field::Bytes(duration))) =
            protobuf_fields(info)?.into_iter().find(|f| f.0 == 1)
        else {
            return Some(Duration::ZERO);
        };
        let (mut seconds, mut nanos) = (0, 0);
        for field in protobuf_fields(duration)? {
            match field {
                (1, Field::Varint(s)) => seconds = s,
                (2, Field::Varint(n)) => nanos = n,
                _ => {}
            }
        }
        let delay =
            Duration::from_secs(seconds.min(3600)) + Duration::from_nanos(nanos % 1_000_000_000);
        return Some(delay);
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one protobuf message (numbers and values), or None if malformed.
fn protobuf_fields(mut bytes: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    fn varint(bytes: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = bytes.split_first()?;
            *bytes = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut fields = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut bytes)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                bytes = bytes.get(n..)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let (value, rest) = (bytes.get(..len)?, bytes.get(len..)?);
                bytes = rest;
                Field::Bytes(value)
            }
            _ => return None,
        };
        fields.push((key >> 3, value));
    }
    Some(fields)
}

/// Standard base64, padded or not (gRPC sends `-bin` values unpadded); the URL-safe
/// alphabet too.
pub(crate) fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in text.iter().filter(|c| **c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_info_and_messages_are_read() {
        // google.rpc.Status{code: 14, details: [Any{RetryInfo{retry_delay: 1.5 s}}]}
        let duration = [0x08, 0x01, 0x10, 0x80, 0xca, 0xb5, 0xee, 0x01];
        let mut info = vec![0x0a, duration.len() as u8];
        info.extend(duration);
        let url = b"type.googleapis.com/google.rpc.RetryInfo";
        let mut any = vec![0x0a, url.len() as u8];
        any.extend(url);
        any.extend([0x12, info.len() as u8]);
        any.extend(&info);
        let mut status = vec![0x08, 14, 0x1a, any.len() as u8];
        status.extend(&any);
        let encoded = base64(&status);
        assert_eq!(
            retry_delay(encoded.as_bytes()),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_delay(b"CA4"), None, "a Status without details");
        assert_eq!(retry_delay(b"!!"), None);
        assert_eq!(percent_decode(b"try%20later%0A%zz%4"), "try later\n%zz%4");
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(17), "an unknown code");
    }

    pub(crate) fn response(status: u16, fields: &[(&str, &str)], body: &[u8]) -> h2::Response {
        h2::Response {
            status,
            headers: fields
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: body.to_vec(),
            trailers: Vec::new(),
        }
    }

    #[test]
    fn any_reply_decodes_to_a_status_or_says_why_not() {
        let none = Secrets::default();
        let decode = |r: h2::Response| decode(r, &none);
        // Not a gRPC reply: its HTTP status. Values h2 refuses (1000, 42) do not panic
        // here either.
        for http in [503, 429, 204, 302, 1000, 42] {
            assert!(
                matches!(decode(response(http, &[], b"")), Err(Error::Http(s)) if s == http),
                "{http}"
            );
        }
        for fields in [&[][..], &[("grpc-status", "x")], &[("grpc-status", "-1")]] {
            let result = decode(response(200, fields, b""));
            assert!(matches!(result, Err(Error::NoStatus)), "{fields:?}");
        }
        let reply = decode(response(200, &[("grpc-status", "14")], b"")).unwrap();
        assert_eq!((reply.code, reply.message.as_str()), (14, ""));
        // The trailers before the headers (a trailers-only reply has none).
        let mut both = response(200, &[("grpc-status", "3")], b"");
        both.trailers = vec![("grpc-status".into(), b"0".to_vec())];
        assert_eq!(decode(both).unwrap().code, 0);
        // The message without its 5-byte prefix; a compressed or short one dropped.
        let ok = [("grpc-status", "0")];
        let body = |r: h2::Response| decode(r).unwrap().body;
        assert_eq!(body(response(200, &ok, b"\0\0\0\0\x02hi")), b"hi");
        assert_eq!(body(response(200, &ok, b"\x01\0\0\0\x02hi")), b"");
        assert_eq!(body(response(200, &ok, b"\0\0")), b"");
        // grpc-message percent-decoded, then scrubbed.
        let mut secrets = Secrets::default();
        secrets.add(b"s3cret-token");
        let fields = [
            ("grpc-status", "8"),
            ("grpc-message", "echo%3A%20s3cret-token%1B%0A"),
        ];
        let reply = super::decode(response(200, &fields, b""), &secrets).unwrap();
        assert_eq!(reply.message, "echo: REDACTED");
        assert_eq!(reply.retry_delay, None);
    }

    fn base64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
}
