//! Error reports for the command-line tools: an error and its causes on one line, each
//! cause said once.

/// `error: cause: cause…` on one line. A cause whose text the message before it already
/// contains is left out (many errors quote their source in their own message, and a
/// chain printer would say it again).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string().replace('\n', " ");
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("load x")]
    struct Context(#[source] Quoting);

    #[test]
    fn each_cause_once() {
        let e = Context(Quoting(std::io::Error::other("refused")));
        assert_eq!(error_chain(&e), "load x: outer: refused");
    }
}
