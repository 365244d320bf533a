//! Text from a server, made fit for a log line: a server that echoes the request (its
//! metadata, credentials included) must not get them shown.

use std::borrow::Cow;

/// The most bytes of text from a server that [`Secrets::scrub`] gives.
pub const MAX_PEER_TEXT: usize = 512;
/// What stands in place of a secret.
pub const REDACTED: &str = "REDACTED";

/// A redaction of the caller's, applied by [`Secrets::scrub`] too.
pub type Redaction = for<'a> fn(&'a str) -> Cow<'a, str>;

/// Values never to be shown (a call's metadata: tokens, API keys, tenants), given by
/// the caller, and what scrubs them out of text.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Vec<String>,
    redaction: Option<Redaction>,
}

impl Secrets {
    /// No secret yet, and `redaction` applied to text after the secrets are replaced,
    /// before it is cut (one that replaces the user information of URLs, say).
    pub fn with_redaction(redaction: Redaction) -> Secrets {
        Secrets {
            values: Vec::new(),
            redaction: Some(redaction),
        }
    }

    /// A value: the value, and each of its words of 8 bytes or more (the token of
    /// `Bearer <token>`, echoed alone); empty values are ignored.
    pub fn add(&mut self, value: &[u8]) {
        let value = printable(&String::from_utf8_lossy(value));
        let words = value.split_whitespace().filter(|w| w.len() >= 8);
        let words: Vec<String> = words.map(str::to_string).collect();
        self.values.push(value);
        self.values.extend(words);
        self.values.retain(|s| !s.is_empty());
        // Longest first: a value before the words inside it.
        self.values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.values.dedup();
    }

    /// Text from the server, fit for one log line: control and bidirectional-override
    /// characters removed, every secret replaced by [`REDACTED`], the caller's
    /// redaction applied, then cut to [`MAX_PEER_TEXT`] bytes (after the replacing, so
    /// that no part of a secret is left at the cut).
    pub fn scrub(&self, text: &str) -> String {
        let mut text = printable(text);
        for secret in &self.values {
            text = text.replace(secret.as_str(), REDACTED);
        }
        if let Some(redaction) = self.redaction
            && let Cow::Owned(redacted) = redaction(&text)
        {
            text = redacted;
        }
        if text.len() > MAX_PEER_TEXT {
            let mut cut = MAX_PEER_TEXT - 3;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("...");
        }
        text
    }
}

/// `text` without control characters and those that reorder what a terminal shows
/// (bidirectional embeddings, overrides, isolates and marks).
fn printable(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            !c.is_control()
                && !matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::percent_decode;

    #[test]
    fn text_from_the_server_is_scrubbed_of_secrets_controls_and_length() {
        let mut secrets = Secrets::default();
        secrets.add(b"Bearer s3cret-token-123");
        secrets.add(b"wood-shop");
        secrets.add(b"");
        let scrub = |text: &str| secrets.scrub(text);
        assert_eq!(
            scrub("echo: authorization=Bearer s3cret-token-123, x-tenant=wood-shop"),
            "echo: authorization=REDACTED, x-tenant=REDACTED"
        );
        // The token alone; split by control or bidi characters; as percent-decoded.
        assert_eq!(scrub("token s3cret-token-123!"), "token REDACTED!");
        assert_eq!(scrub("s3cret-\u{7}token\u{202e}-123"), "REDACTED");
        assert_eq!(
            scrub(&percent_decode(b"Bearer%20s3cret%2Dtoken-123")),
            "REDACTED"
        );
        // Terminal escapes, new lines and reordering characters are gone.
        assert_eq!(
            scrub("a\u{1b}[31mred\r\nb\u{2066}c\u{200f}d\u{61c}"),
            "a[31mredbcd"
        );
        // Bounded, on a character boundary, after the replacing: a secret across the
        // cut is not left half shown.
        let long = format!(
            "{}Bearer s3cret-token-123{}",
            "é".repeat(250),
            "x".repeat(600)
        );
        let cut = scrub(&long);
        assert!(cut.len() <= MAX_PEER_TEXT, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert!(!cut.contains("s3cret") && cut.contains("REDACTED"), "{cut}");
        assert!(!scrub(&"é".repeat(1000)).contains('\u{fffd}'));
    }

    #[test]
    fn the_callers_redaction_runs_after_the_secrets_and_before_the_cut() {
        fn userinfo(text: &str) -> Cow<'_, str> {
            match text.split_once("://u:pw@") {
                Some((a, b)) => Cow::Owned(format!("{a}://REDACTED:REDACTED@{b}")),
                None => Cow::Borrowed(text),
            }
        }
        let mut secrets = Secrets::with_redaction(userinfo);
        secrets.add(b"s3cret-token");
        assert_eq!(
            secrets.scrub("s3cret-token at http://u:pw@proxy:8080/x"),
            "REDACTED at http://REDACTED:REDACTED@proxy:8080/x"
        );
        let long = format!("{}http://u:pw@proxy", "x".repeat(MAX_PEER_TEXT - 20));
        let cut = secrets.scrub(&long);
        assert!(cut.len() <= MAX_PEER_TEXT && !cut.contains("pw"), "{cut}");
        assert_eq!(
            Secrets::default().scrub("http://u:pw@proxy"),
            "http://u:pw@proxy"
        );
    }
}
