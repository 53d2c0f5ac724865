//! An error and its causes as one line, for the binaries' `error: ...`.
//!
//! Our errors put their cause in their own message ("{path}: {source}")
//! and also name it as their `source()`, so that both a plain `{}` and a
//! walk of the chain tell the whole story. Printing the chain naively
//! (anyhow's `{:#}`, or its "Caused by:" list) then says the OS error
//! twice. Here a cause is added only when the line does not say it yet.

use std::error::Error;

/// `error` and those of its causes that its message does not already hold,
/// joined by ": ".
pub fn error_line(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct WithPath {
        path: String,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the manifest")]
    struct Context(#[source] WithPath);

    #[test]
    fn each_cause_is_said_once() {
        let os = || std::io::Error::from_raw_os_error(2);
        let inner = WithPath {
            path: "/x/manifest.json".into(),
            source: os(),
        };
        let os_text = os().to_string();
        assert_eq!(error_line(&inner), format!("/x/manifest.json: {os_text}"));
        // A context that does not repeat its cause gets it appended.
        let outer = Context(inner);
        assert_eq!(
            error_line(&outer),
            format!("reading the manifest: /x/manifest.json: {os_text}")
        );
        assert_eq!(error_line(&os()), os_text);
    }
}
