//! Fuzz target bodies for the client's parsers of registry answers (`WWW-Authenticate`
//! challenges, `Content-Range`): called by the cargo-fuzz targets in `fixtures/fuzz` and
//! by the corpus-replay test on stable. Each panics only on a bug.

use crate::blob::parse_content_range;
use crate::challenge::parse_challenge;

/// RFC 9110 `tchar`: what a parameter name is made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `parse_challenge`: a parsed challenge whose parameter names are tokens prints (every
/// value quoted and escaped) as one that parses to itself.
pub fn challenge(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Some(c) = parse_challenge(s) else { return };
    assert!(!c.scheme.is_empty());
    assert_eq!(c.scheme, c.scheme.to_ascii_lowercase());
    let plain = !c.scheme.contains(char::is_whitespace)
        && !c.scheme.contains(',')
        && c.params.keys().all(|k| is_token(k));
    if !plain {
        return;
    }
    let params: Vec<String> = c
        .params
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    let shown = format!("{} {}", c.scheme, params.join(","));
    assert_eq!(
        parse_challenge(&shown).as_ref(),
        Some(&c),
        "{s:?} printed as {shown:?}"
    );
}

/// `parse_content_range` (a resumed blob GET's `Content-Range`): what it reads prints as
/// a value that reads the same.
pub fn content_range(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Some((start, total)) = parse_content_range(s) else {
        return;
    };
    let shown = match total {
        Some(t) => format!("bytes {start}-{start}/{t}"),
        None => format!("bytes {start}-{start}/*"),
    };
    assert_eq!(parse_content_range(&shown), Some((start, total)), "{s:?}");
}
