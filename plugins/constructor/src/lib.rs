//! Test fixture: a shared library whose constructor (run by the dynamic loader, before any symbol is looked up)
//! misbehaves. Loading it must never take down the command that checks it.
//!
//! What the constructor does is not chosen by an environment variable (the probe that loads it inherits the
//! command's environment, and so would everything else) but by bytes in the file itself: a test copies the
//! built library and overwrites the mode after [`MODE`]'s prefix, which also gives each variant its own hash.

/// `PMHOST-CTOR-MODE:` followed by 8 bytes: `exit0___` (exit 0), `abort___`, `hang____`; anything else does
/// nothing.
#[used]
static MODE: [u8; 25] = *b"PMHOST-CTOR-MODE:none____";

const PREFIX_LEN: usize = b"PMHOST-CTOR-MODE:".len();

#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the loader calls once when the library is
// mapped; this entry is exactly such a pointer.
#[unsafe(link_section = ".init_array")]
static CONSTRUCTOR: extern "C" fn() = construct;

extern "C" fn construct() {
    // SAFETY: reading our own static; volatile, so the compiler cannot fold in the unpatched value.
    let mode = unsafe { std::ptr::read_volatile(&raw const MODE) };
    match &mode[PREFIX_LEN..] {
        b"exit0___" => std::process::exit(0),
        b"abort___" => std::process::abort(),
        b"hang____" => loop {
            std::thread::park();
        },
        _ => {}
    }
}
