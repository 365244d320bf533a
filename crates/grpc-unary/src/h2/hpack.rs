//! HPACK decoding (RFC 7541), for the replies: integers, string literals (Huffman by a
//! table of 4-bit steps built at compile time from the code lengths of Appendix B),
//! the static table and a dynamic table of at most [`TABLE_SIZE`] bytes.
//!
//! Bounded: the decoded header list is counted as it is decoded (name + value + 32 per
//! field) and decoding stops as soon as it passes the limit given, before any string
//! beyond it is copied; integers are at most 4 continuation bytes; table size updates
//! come only at the start of a block, at most two, never above the limit.

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
pub(super) fn huffman_decode(bytes: &[u8], out: &mut Vec<u8>, room: usize) -> Result<(), Refused> {
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

#[cfg(test)]
mod tests {
    use crate::h2::hpack;
    use crate::h2::request::{integer_into, string_into};
    use crate::h2::{MAX_HEADER_BLOCK, MAX_HEADER_LIST};
    use std::time::{Duration, Instant};

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
