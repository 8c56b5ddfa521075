//! Random bytes for secrets, nonces and ids, from the OS random source only.
//!
//! Invariant: this module fails closed. When the OS source fails the caller
//! gets a [`RandomError`], never zeros or bytes from a seeded generator, so a
//! secret or nonce is either unpredictable or not made at all.

/// The OS random source could not fill a buffer.
#[derive(Debug, thiserror::Error)]
#[error("the OS random source failed: {0}")]
pub struct RandomError(getrandom::Error);

/// Fills `buf` from the OS random source.
pub fn fill(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(RandomError)
}

/// `bytes` random bytes as lowercase hex (two digits per byte).
pub fn hex_secret(bytes: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; bytes];
    fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_secret_has_two_lowercase_digits_per_byte() {
        let secret = hex_secret(16).unwrap();
        assert_eq!(secret.len(), 32);
        assert!(
            secret
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{secret}"
        );
    }

    #[test]
    fn two_fills_differ() {
        // 2^-256 odds of a false failure.
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        fill(&mut a).unwrap();
        fill(&mut b).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, [0u8; 32]);
    }
}
