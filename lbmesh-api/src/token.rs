//! Where a client's secret comes from: the command line, a file, or
//! standard input, so a token need not sit in argv (which every local user
//! can read in `/proc/PID/cmdline`) or in the environment.
//!
//! `--token -` reads the token from standard input; `--token-file FILE`
//! reads it from a file (such as the data dir's `control-token`, mode
//! 0600). Either way the first line, trimmed, is the token; an empty one
//! is an error naming where it came from. A server compares a token it was
//! given with [`same_token`].

use std::io::Read;
use std::path::Path;

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
