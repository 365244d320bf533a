//! Credentials in URLs (`http://user:pass@host`) are never shown: wherever a URL is
//! logged, printed or exported, its user information is replaced by
//! `REDACTED:REDACTED`, as the HTTP semantic conventions ask of `url.full`. A URL a
//! setting gives is shown without its query and fragment too ([`setting_url`]): a
//! token often travels there (`?token=...`). And [`not_tls`] says in words what a TLS
//! handshake's error text means when the port does not speak TLS (the services' client
//! and the OTLP one both log it).

// Parses what a peer or a file sends: no index or slice that could panic.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use std::borrow::Cow;

/// What stands in place of the user information.
pub const REDACTED: &str = "REDACTED:REDACTED";

/// One URL, as a setting gives it: `http://user:pass@host/x` becomes
/// `http://REDACTED:REDACTED@host/x`. A value without `://` (a URL typed without its
/// scheme, `user:pass@host:5000`) is redacted the same way up to its first `/`.
pub fn url(value: &str) -> Cow<'_, str> {
    // No '@', no user information: the common case, on every request's span.
    if !value.contains('@') {
        Cow::Borrowed(value)
    } else if value.contains("://") {
        credentials(value)
    } else {
        redact_authority(value, 0)
    }
}

/// What stands in place of a setting's query or fragment.
pub const HIDDEN: &str = "REDACTED";

/// A URL as a setting gives it, to be shown (a refused `--orders-url`, an OTLP
/// endpoint): its user information redacted as by [`url`], and its query and fragment,
/// if any, replaced by [`HIDDEN`] (`http://o:5000/?token=s3cret#x` becomes
/// `http://o:5000/?REDACTED#REDACTED`), so that the user still sees that they were there.
pub fn setting_url(value: &str) -> Cow<'_, str> {
    let start = value.find("://").map_or(0, |i| i + 3);
    // The user information ends at the last '@' before the path: a password typed
    // unencoded may hold a '?' or a '#', which must not end it here.
    let authority_end = value[start..].find('/').map_or(value.len(), |i| start + i);
    let host = value[start..authority_end]
        .rfind('@')
        .map_or(start, |at| start + at + 1);
    let cut = value[host..].find(['?', '#']).map(|i| host + i);
    if host == start && cut.is_none() {
        return Cow::Borrowed(value);
    }
    let mut shown = value[..start].to_string();
    if host > start {
        shown.push_str(REDACTED);
        shown.push('@');
    }
    let Some(cut) = cut else {
        shown.push_str(&value[host..]);
        return Cow::Owned(shown);
    };
    shown.push_str(&value[host..cut]);
    let rest = &value[cut..];
    if rest.starts_with('?') {
        shown.push('?');
        shown.push_str(HIDDEN);
    }
    if rest.contains('#') {
        shown.push('#');
        shown.push_str(HIDDEN);
    }
    Cow::Owned(shown)
}

/// Free text (a log line, an error message): the user information of every
/// `scheme://…@host` in it is replaced.
pub fn credentials(text: &str) -> Cow<'_, str> {
    let mut text = Cow::Borrowed(text);
    let mut from = 0;
    while let Some(i) = text[from..].find("://") {
        let start = from + i + 3;
        let redacted = match redact_authority(&text, start) {
            Cow::Owned(changed) => Some(changed),
            Cow::Borrowed(_) => None,
        };
        if let Some(changed) = redacted {
            text = Cow::Owned(changed);
        }
        from = start;
    }
    text
}

/// `text` with the user information of the authority starting at `start` replaced. The
/// authority ends at the path, query or fragment, or where a URL ends in a text (white
/// space, a quote, a bracket).
fn redact_authority(text: &str, start: usize) -> Cow<'_, str> {
    let rest = text.as_bytes().get(start..).unwrap_or_default();
    let end = rest
        .iter()
        .position(|b| b"/?#\"'<>`\\".contains(b) || b.is_ascii_whitespace())
        .unwrap_or(rest.len());
    let at = rest
        .get(..end)
        .and_then(|authority| authority.iter().rposition(|b| *b == b'@'));
    // `start` and `start + at` fall on ASCII bytes: character boundaries.
    match (
        at,
        text.get(..start),
        at.and_then(|at| text.get(start + at..)),
    ) {
        (Some(_), Some(before), Some(after)) => Cow::Owned(format!("{before}{REDACTED}{after}")),
        _ => Cow::Borrowed(text),
    }
}

/// What a TLS handshake answered with something that is not TLS means (rustls:
/// "received corrupt message of type InvalidContentType", as an I/O error of kind
/// `InvalidData` from the connect): a plain-HTTP port behind an `https://` URL.
pub fn not_tls(text: &str) -> Option<String> {
    text.contains("InvalidContentType").then(|| {
        "the server does not speak TLS (a plain-HTTP port?): use http:// instead of https://".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_replaced_and_the_rest_kept() {
        assert_eq!(
            url("http://user:s3cret@order:5000/api"),
            "http://REDACTED:REDACTED@order:5000/api"
        );
        assert_eq!(
            url("https://token@s.example"),
            "https://REDACTED:REDACTED@s.example"
        );
        // An '@' in the password, as ureq reads it: the last '@' ends the user information.
        assert_eq!(
            url("http://u:p@ss@h:1/x@y"),
            "http://REDACTED:REDACTED@h:1/x@y"
        );
        assert_eq!(
            url("user:s3cret@order:5000/x"),
            "REDACTED:REDACTED@order:5000/x"
        );
        assert!(matches!(url("http://order:5000/a@b"), Cow::Borrowed(_)));
        assert!(matches!(url("http://order:5000"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_setting_url_is_shown_without_its_query_and_fragment() {
        assert_eq!(
            setting_url("http://x:5000/?token=SECRET"),
            "http://x:5000/?REDACTED"
        );
        assert_eq!(
            setting_url("http://u:pw@x:5000/a?t=S#frag"),
            "http://REDACTED:REDACTED@x:5000/a?REDACTED#REDACTED"
        );
        assert_eq!(setting_url("http://x:5000#S"), "http://x:5000#REDACTED");
        // A '#' inside the query is the fragment's start; a '?' after '#' is part of it.
        assert_eq!(setting_url("http://x#a?b"), "http://x#REDACTED");
        assert_eq!(
            setting_url("u:pw@x:1/?k=S"),
            "REDACTED:REDACTED@x:1/?REDACTED"
        );
        // A password typed with a '#' or a '?' in it is hidden whole.
        assert_eq!(
            setting_url("http://u:p#w?d@x:1/a?t=S"),
            "http://REDACTED:REDACTED@x:1/a?REDACTED"
        );
        assert_eq!(setting_url("http://x:1/a@b"), "http://x:1/a@b");
        assert!(matches!(setting_url("http://x:5000/api"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_url_in_a_text_is_redacted() {
        let text = "orders http://a:pw1@o:1, stocks \"https://b:pw2@s:2/x\" and http://plain:3/@";
        let clean = credentials(text);
        assert_eq!(
            clean,
            "orders http://REDACTED:REDACTED@o:1, stocks \"https://REDACTED:REDACTED@s:2/x\" and http://plain:3/@"
        );
        assert!(matches!(credentials("no url here, a@b"), Cow::Borrowed(_)));
        assert!(matches!(
            credentials("http://x:1/ and ://"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            credentials("trailing http://u:p@"),
            "trailing http://REDACTED:REDACTED@"
        );
    }
}
