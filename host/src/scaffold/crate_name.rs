//! Which names a new plugin crate may take: what cargo accepts as a package name, and what the generated crate
//! can build under.

use thiserror::Error;

/// Why a name cannot be a plugin crate's name. Each message says what to change.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CrateNameError {
    #[error("the crate name is empty: give a name with --name")]
    Empty,
    #[error("the crate name {name:?} is longer than 64 characters: choose a shorter one with --name")]
    TooLong { name: String },
    #[error(
        "the crate name {name:?} starts with {first:?}: a crate name starts with an ASCII letter or `_` (choose one \
         with --name)"
    )]
    BadStart { name: String, first: char },
    #[error(
        "the crate name {name:?} contains {bad:?}: a crate name has only ASCII letters, digits, `-` and `_` \
         (choose one with --name)"
    )]
    BadCharacter { name: String, bad: char },
    #[error("the crate name {name:?} is a Rust keyword: choose another with --name")]
    Keyword { name: String },
    #[error("the crate name {name:?} is taken by {what}: choose another with --name")]
    Reserved { name: String, what: &'static str },
    #[error(
        "the crate name {name:?} is not snake case (lowercase, words apart by one `-` or `_`): Rust would warn \
         about it in every build; choose one with --name, say {suggestion:?}"
    )]
    NotSnakeCase { name: String, suggestion: String },
}

/// Rust's keywords (strict and reserved, all editions): cargo refuses them as package names.
const KEYWORDS: &[&str] = &[
    "Self", "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate", "do", "dyn",
    "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "macro",
    "match", "mod", "move", "mut", "override", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
    "trait", "true", "try", "type", "typeof", "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Names that build into something else: Rust's own crates, cargo's directories in `target/`, and the crates
/// the generated plugin depends on.
const RESERVED: &[(&str, &str)] = &[
    ("std", "Rust's standard library"),
    ("core", "Rust's standard library"),
    ("alloc", "Rust's standard library"),
    ("proc_macro", "Rust's standard library"),
    ("test", "Rust's built-in test library"),
    ("build", "a directory cargo makes in target/"),
    ("deps", "a directory cargo makes in target/"),
    ("examples", "a directory cargo makes in target/"),
    ("incremental", "a directory cargo makes in target/"),
    ("pmhost_plugin_api", "the plugin interface the crate depends on"),
    ("serde", "a crate the plugin depends on"),
    ("tokio", "a crate the plugin depends on"),
];

/// Checks that `name` can be the package name of a generated plugin crate.
pub fn check_crate_name(name: &str) -> Result<(), CrateNameError> {
    let owned = || name.to_owned();
    let Some(first) = name.chars().next() else { return Err(CrateNameError::Empty) };
    if name.len() > 64 {
        return Err(CrateNameError::TooLong { name: owned() });
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(CrateNameError::BadCharacter { name: owned(), bad });
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return Err(CrateNameError::BadStart { name: owned(), first });
    }
    if KEYWORDS.contains(&name) {
        return Err(CrateNameError::Keyword { name: owned() });
    }
    // Cargo treats `-` and `_` alike when it names the library.
    let library = name.replace('-', "_");
    if let Some((_, what)) = RESERVED.iter().find(|(reserved, _)| *reserved == library) {
        return Err(CrateNameError::Reserved { name: owned(), what });
    }
    // The library's name is the crate's name in Rust, which rustc's `non_snake_case` lint checks: the generated
    // crate would build with a warning, and `cargo clippy -- -D warnings` would fail.
    let inner = library.trim_matches('_');
    if inner.contains(|c: char| c.is_ascii_uppercase()) || inner.contains("__") {
        return Err(CrateNameError::NotSnakeCase { name: owned(), suggestion: snake_case(name) });
    }
    Ok(())
}

/// `name` in lowercase, with each run of `-` and `_` inside it made one (the first of the run).
fn snake_case(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    let mut out = String::with_capacity(lower.len());
    for c in lower.chars() {
        let separator = |c: char| c == '-' || c == '_';
        if separator(c) && out.chars().last().is_some_and(separator) && !out.chars().all(separator) {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cargo_accepts_pass() {
        for name in ["job", "mail-queue", "mail_queue", "_private", "__private", "job-", "_", "job2", &"a".repeat(64)] {
            assert_eq!(check_crate_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_that_cannot_build_are_refused_with_the_reason() {
        type IsExpected = fn(&CrateNameError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            ("", |e| matches!(e, CrateNameError::Empty)),
            ("2fast", |e| matches!(e, CrateNameError::BadStart { first: '2', .. })),
            ("-job", |e| matches!(e, CrateNameError::BadStart { first: '-', .. })),
            ("my job", |e| matches!(e, CrateNameError::BadCharacter { bad: ' ', .. })),
            ("my.job", |e| matches!(e, CrateNameError::BadCharacter { bad: '.', .. })),
            ("jöb", |e| matches!(e, CrateNameError::BadCharacter { bad: 'ö', .. })),
            ("fn", |e| matches!(e, CrateNameError::Keyword { .. })),
            ("async", |e| matches!(e, CrateNameError::Keyword { .. })),
            ("test", |e| matches!(e, CrateNameError::Reserved { .. })),
            ("proc-macro", |e| matches!(e, CrateNameError::Reserved { .. })),
            ("pmhost-plugin-api", |e| matches!(e, CrateNameError::Reserved { .. })),
            ("deps", |e| matches!(e, CrateNameError::Reserved { .. })),
            ("MyJob", |e| matches!(e, CrateNameError::NotSnakeCase { suggestion, .. } if suggestion == "myjob")),
            (
                "Mail-Queue",
                |e| matches!(e, CrateNameError::NotSnakeCase { suggestion, .. } if suggestion == "mail-queue"),
            ),
            (
                "mail__queue",
                |e| matches!(e, CrateNameError::NotSnakeCase { suggestion, .. } if suggestion == "mail_queue"),
            ),
            (
                "mail-_queue",
                |e| matches!(e, CrateNameError::NotSnakeCase { suggestion, .. } if suggestion == "mail-queue"),
            ),
        ];
        for (name, expected) in cases {
            let error = check_crate_name(name).expect_err(name);
            assert!(expected(&error), "{name}: {error:?}");
        }
        let long = "a".repeat(65);
        assert!(matches!(check_crate_name(&long), Err(CrateNameError::TooLong { .. })));
        assert_eq!(
            check_crate_name("my job").unwrap_err().to_string(),
            "the crate name \"my job\" contains ' ': a crate name has only ASCII letters, digits, `-` and `_` \
             (choose one with --name)"
        );
    }
}
