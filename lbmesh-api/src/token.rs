//! Where a client's secret comes from: the command line, a file, or
//! standard input, so a token need not sit in argv (which every local user
//! can read in `/proc/PID/cmdline`) or in the environment.
//!
//! `--token -` reads the token from standard input; `--token-file FILE`
//! reads it from a file (such as the data dir's `control-token`, mode
//! 0600). Either way the first line, trimmed, is the token; an empty one
//! is an error naming where it came from. A server compares a token it was
//! given with [`same_token`].
//!
//! Tokens are `<prefix><CA certificate SHA-256, 64 hex>-<secret, 32 hex>`
//! ([`JOIN_PREFIX`], [`CONTROL_PREFIX`]); [`TokenParts::parse`] takes one
//! apart, so a client can pin the CA by the digest.

use std::io::Read;
use std::path::Path;

/// Join tokens start with this.
pub const JOIN_PREFIX: &str = "LBMTKN-2-";
/// Control tokens start with this.
pub const CONTROL_PREFIX: &str = "LBMCTL-2-";

/// A token taken apart.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenParts {
    /// Hex SHA-256 of the cluster CA's certificate, lowercase.
    pub ca_digest: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TokenParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenParts")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TokenParts {
    /// Parses a token that should start with `prefix`; the error says what
    /// is wrong with it.
    pub fn parse(text: &str, prefix: &str) -> Result<Self, String> {
        let rest = text.strip_prefix(prefix).ok_or_else(|| {
            if text.starts_with("LBMTKN-1-") || (text.starts_with("LBMCTL-") && !text.starts_with("LBMCTL-2-")) {
                "this token is of an lbd from before cluster certificates; ask a manager of the cluster for a current one".to_owned()
            } else {
                format!("the token does not start with {prefix}")
            }
        })?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or("a token has a CA digest and a secret part")?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the token's CA digest is not 64 hex digits".to_owned());
        }
        let secret = decode_hex(secret)
            .filter(|s| s.len() == 16)
            .ok_or("the token's secret is not 32 hex digits")?;
        Ok(Self {
            ca_digest: digest.to_ascii_lowercase(),
            secret,
        })
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Longest token read from a file or standard input; every lbmesh token is
/// far shorter, so more is a wrong file.
const MAX_TOKEN_BYTES: u64 = 4096;

/// The token given as `--token VALUE` (`-`: read standard input) or
/// `--token-file FILE`, or `None` when neither is.
pub fn read_token(value: Option<&str>, file: Option<&Path>) -> Result<Option<String>, String> {
    match (value, file) {
        (Some(_), Some(_)) => Err("give --token or --token-file, not both".to_owned()),
        (Some("-"), None) => {
            let mut text = String::new();
            std::io::stdin()
                .take(MAX_TOKEN_BYTES)
                .read_to_string(&mut text)
                .map_err(|e| format!("--token -: cannot read standard input: {e}"))?;
            first_line(&text, "--token -: standard input").map(Some)
        }
        (Some(token), None) => Ok(Some(token.to_owned())),
        (None, Some(path)) => {
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|file| file.take(MAX_TOKEN_BYTES).read_to_string(&mut text))
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            first_line(&text, &format!("--token-file {}", path.display())).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// Whether a presented token is the expected one, in time that depends on
/// the length only (every lbmesh token of one kind has one length), so a
/// client cannot learn a token byte by byte from answer times.
pub fn same_token(expected: &str, presented: &str) -> bool {
    expected.len() == presented.len()
        && expected
            .bytes()
            .zip(presented.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn first_line(text: &str, source: &str) -> Result<String, String> {
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(format!("{source}: no token (the first line is empty)"));
    }
    Ok(line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_gives_its_first_line_trimmed() {
        let dir = std::env::temp_dir().join(format!("lbmesh-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t");
        std::fs::write(&path, "  LBMCTL-abc \nrest\n").unwrap();
        assert_eq!(
            read_token(None, Some(&path)),
            Ok(Some("LBMCTL-abc".to_owned()))
        );
        std::fs::write(&path, "\n").unwrap();
        let error = read_token(None, Some(&path)).unwrap_err();
        assert!(error.contains("no token"), "{error}");
        let missing = dir.join("missing");
        let error = read_token(None, Some(&missing)).unwrap_err();
        assert!(error.starts_with("--token-file "), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_token_compares_whole_strings() {
        assert!(same_token("LBMCTL-abc", "LBMCTL-abc"));
        assert!(!same_token("LBMCTL-abc", "LBMCTL-abd"));
        assert!(!same_token("LBMCTL-abc", "LBMCTL-ab"));
        assert!(!same_token("", "x"));
    }

    #[test]
    fn a_value_is_taken_as_given_and_both_is_an_error() {
        assert_eq!(read_token(Some("x"), None), Ok(Some("x".to_owned())));
        assert_eq!(read_token(None, None), Ok(None));
        assert!(read_token(Some("x"), Some(Path::new("f"))).is_err());
    }
}
