//! The frame layer (RFC 9113 4): whole frames read and written on the socket, each
//! by the caller's deadline, and the small pieces of the wire format (a frame's
//! header, padding, 4-byte numbers).

use std::io;
use std::time::{Duration, Instant};

use super::{Connection, Error, Io, MAX_FRAME, PADDED};

/// One frame read: the fields of its header, and its payload.
pub(super) struct Frame {
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
    pub(super) payload: Vec<u8>,
}

impl<S: Io> Connection<S> {
    /// Writes all of `bytes` by `deadline`.
    pub(super) fn write(&mut self, mut bytes: &[u8], deadline: Instant) -> Result<(), Error> {
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
    pub(super) fn read_frame(&mut self, deadline: Instant) -> Result<Frame, Error> {
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

/// The time left before `deadline`, or a timeout error.
pub(super) fn left(deadline: Instant) -> io::Result<Duration> {
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
pub(super) fn u32_at(bytes: &[u8], at: usize) -> Result<u32, Error> {
    bytes
        .get(at..)
        .and_then(<[u8]>::first_chunk::<4>)
        .map(|b| u32::from_be_bytes(*b))
        .ok_or(Error::Protocol("a frame too short"))
}

/// The payload of a frame that is one 4-byte number (RST_STREAM, WINDOW_UPDATE).
pub(super) fn u32_of(payload: &[u8]) -> Result<u32, Error> {
    match *payload {
        [a, b, c, d] => Ok(u32::from_be_bytes([a, b, c, d])),
        _ => Err(Error::Protocol("a frame of the wrong size")),
    }
}

/// The payload without its padding (PADDED flag).
pub(super) fn unpad(payload: &[u8], flags: u8) -> Result<&[u8], Error> {
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
pub(super) fn frame_into(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let [_, l0, l1, l2] = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    out.extend_from_slice(&[l0, l1, l2, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::testing::*;
    use crate::h2::*;

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
}
