//! Names of hosts and tasks: they become file names and process titles, so they are restricted.

use thiserror::Error;

/// The longest name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A name is not valid.
#[derive(Debug, Error)]
#[error("invalid {what} {name:?}: use 1 to 64 characters from A-Z a-z 0-9 _ . - (not \".\" or \"..\")")]
pub struct InvalidName {
    what: &'static str,
    name: String,
}

/// Checks a host or task name (`what` names it in the error).
pub fn validate(what: &'static str, name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok { Ok(()) } else { Err(InvalidName { what, name: name.to_owned() }) }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_file_safe_names() {
        for name in ["process", "mailer-2", "a.b_c", &"x".repeat(64)] {
            assert!(validate("name", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn refuses_paths_and_odd_characters() {
        for name in ["", ".", "..", "a/b", "a b", "ä", &"x".repeat(65), "-\n"] {
            assert!(validate("name", name).is_err(), "{name:?}");
        }
    }
}
