//! The budget of frames one request may read beyond those that carry its reply:
//! floods of control frames (CVE-2019-9512, 9515, 9518) are told ENHANCE_YOUR_CALM
//! and the connection closed, rather than answered without end.

use super::{
    CONTINUATION, DATA, Error, GOAWAY, HEADERS, PING, PRIORITY, RST_STREAM, SETTINGS, WINDOW_UPDATE,
};

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

/// What one request may still read: see [`FRAME_BUDGET`].
pub(super) struct Budget {
    frames: u64,
    /// Bytes of body not yet worth a frame.
    bytes: usize,
}

impl Budget {
    pub(super) fn new() -> Budget {
        Budget {
            frames: FRAME_BUDGET,
            bytes: 0,
        }
    }

    /// One frame read, of type `kind`.
    pub(super) fn spend(&mut self, kind: u8) -> Result<(), Error> {
        self.frames = self.frames.checked_sub(1).ok_or(Error::Calm(flood(kind)))?;
        Ok(())
    }

    /// `bytes` of body sent or read.
    pub(super) fn earn(&mut self, bytes: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::testing::*;
    use crate::h2::*;

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
}
