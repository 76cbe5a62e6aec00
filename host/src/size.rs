//! Byte sizes as users write them: a plain number of bytes, or with a unit (`512MiB`, `1.5G`, `64k`).

use thiserror::Error;

/// A size could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid size {0:?}: use a number of bytes or a number with a unit (k, M, G, KiB, MiB, GiB), e.g. \"512MiB\"")]
pub struct InvalidSize(String);

/// Parses a size in bytes. `k`/`M`/`G` and `KiB`/`MiB`/`GiB` are all binary (1024-based), as memory is counted.
pub fn parse(text: &str) -> Result<u64, InvalidSize> {
    let fail = || InvalidSize(text.to_owned());
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| fail())?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(fail()),
    };
    let bytes = value * factor;
    if !bytes.is_finite() || !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(fail());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_sizes() {
        assert_eq!(parse("4096").unwrap(), 4096);
        assert_eq!(parse("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse("64k").unwrap(), 64 << 10);
        assert!(parse("lots").is_err());
        assert!(parse("-1M").is_err());
    }
}
