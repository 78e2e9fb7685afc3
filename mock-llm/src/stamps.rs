//! Stamped tokens: each carries the time it was sent, so a load test can measure each
//! token's delivery latency.

/// Bytes of one stamped token: `@`, 16 digits and a space.
pub const STAMP_TOKEN_BYTES: usize = 18;

/// A stamped content token for the time `unix_micros`: `@<16 digits> `, e.g.
/// `@1764300000123456 ` (the format [`parse_stamps`] reads).
pub fn stamp_token(unix_micros: u64) -> String {
    format!("@{unix_micros:016} ")
}

/// Microseconds since the Unix epoch now, the clock stamps are read against.
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Every stamp in `text` (each `@` followed by exactly 16 ASCII digits), in order: the
/// send times, in Unix microseconds, of the stamped tokens a delta carries (a server may
/// merge several tokens into one delta).
pub fn parse_stamps(text: &str) -> impl Iterator<Item = u64> + '_ {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().filter_map(move |(i, &b)| {
        let digits = bytes.get(i + 1..i + 17).filter(|_| b == b'@')?;
        if !digits.iter().all(u8::is_ascii_digit) || bytes.get(i + 17).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        digits.iter().try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
    })
}
