//! Test fixture: a shared library with an ordinary C export and no pmhost entry point.

/// Adds two numbers.
#[unsafe(no_mangle)]
pub extern "C" fn add(a: u32, b: u32) -> u32 {
    a.wrapping_add(b)
}
