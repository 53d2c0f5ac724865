//! A worker's panic, turned into text for the error that reports it.

use std::any::Any;

/// The message a panic was raised with (`panic!("...")` carries a `&str` or
/// a `String`); None for any other payload.
pub(crate) fn message(payload: &(dyn Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_of_message_are_read() {
        let caught = |f: fn()| std::panic::catch_unwind(f).expect_err("panicked");
        assert_eq!(
            message(&*caught(|| panic!("plain"))).as_deref(),
            Some("plain")
        );
        let formatted = caught(|| panic!("{} of {}", 3, 4));
        assert_eq!(message(&*formatted).as_deref(), Some("3 of 4"));
        let other = caught(|| std::panic::panic_any(7u8));
        assert_eq!(message(&*other), None);
    }
}
