//! Compose's variable interpolation, applied to every string value of a
//! compose file before it is read (`lbctl stack deploy`).
//!
//! | form | value |
//! |---|---|
//! | `$VAR`, `${VAR}` | VAR, or empty when unset |
//! | `${VAR:-default}` / `${VAR-default}` | `default` when VAR is unset or empty / unset |
//! | `${VAR:?message}` / `${VAR?message}` | an error with `message` when VAR is unset or empty / unset |
//! | `${VAR:+other}` / `${VAR+other}` | `other` when VAR is set and not empty / set, else empty |
//! | `$$` | a literal `$` |
//!
//! A default, message or replacement may itself hold variables
//! (`${A:-${B}}`). Any other `$` is an error naming the text, as docker
//! compose's "invalid interpolation format".

/// `text` with every variable replaced by what `lookup` gives for it.
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = closing_brace(inner).ok_or_else(|| {
                format!("invalid interpolation format in {text:?}: no closing '}}'")
            })?;
            out.push_str(&braced(&inner[..end], text, lookup)?);
            rest = &inner[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(format!(
                    "invalid interpolation format in {text:?}: '$' must start a variable \
                     ($VAR or ${{VAR}}); write '$$' for a literal '$'"
                ));
            }
            out.push_str(&lookup(&after[..len]).unwrap_or_default());
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The length of the variable name `text` starts with (letters, digits
/// and '_', not starting with a digit).
fn name_len(text: &str) -> usize {
    let mut len = 0;
    for (i, c) in text.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        len = i + c.len_utf8();
    }
    len
}

/// Where the `}` that closes a `${` is in `inner` (the text after it),
/// counting nested `${...}`.
fn closing_brace(inner: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// The value of one `${...}` whose inside is `inner`.
fn braced(
    inner: &str,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let len = name_len(inner);
    if len == 0 {
        return Err(format!(
            "invalid interpolation format in {text:?}: ${{{inner}}} names no variable"
        ));
    }
    let name = &inner[..len];
    let op = &inner[len..];
    let value = lookup(name);
    let set = value.is_some();
    let non_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (colon, op) = match op.strip_prefix(':') {
        Some(op) => (true, op),
        None => (false, op),
    };
    // With ':' an empty value counts as unset.
    let present = if colon { non_empty } else { set };
    let Some(kind) = op.chars().next() else {
        if colon {
            return Err(format!(
                "invalid interpolation format in {text:?}: ${{{inner}}} ends at ':'"
            ));
        }
        return Ok(value.unwrap_or_default());
    };
    let arg = &op[kind.len_utf8()..];
    match kind {
        '-' if present => Ok(value.unwrap_or_default()),
        '-' => interpolate(arg, lookup),
        '?' if present => Ok(value.unwrap_or_default()),
        '?' => {
            let message = interpolate(arg, lookup)?;
            let why = if message.is_empty() {
                "not set".to_owned()
            } else {
                message
            };
            Err(format!(
                "required variable {name} is missing a value: {why}"
            ))
        }
        '+' if present => interpolate(arg, lookup),
        '+' => Ok(String::new()),
        _ => Err(format!(
            "invalid interpolation format in {text:?}: ${{{inner}}}: use :-, -, :?, ?, :+ or +"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("7".to_owned()),
            "EMPTY" => Some(String::new()),
            "PORT_1" => Some("8080".to_owned()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<String, String> {
        interpolate(text, &env)
    }

    #[test]
    fn plain_and_braced_variables() {
        assert_eq!(run("redis:$TAG").unwrap(), "redis:7");
        assert_eq!(run("redis:${TAG}-alpine").unwrap(), "redis:7-alpine");
        assert_eq!(run("$PORT_1:80").unwrap(), "8080:80");
        assert_eq!(run("x${UNSET}y").unwrap(), "xy");
        assert_eq!(run("no variables").unwrap(), "no variables");
    }

    #[test]
    fn defaults_tell_unset_from_empty() {
        assert_eq!(run("${UNSET:-6379}").unwrap(), "6379");
        assert_eq!(run("${EMPTY:-6379}").unwrap(), "6379");
        assert_eq!(run("${EMPTY-6379}").unwrap(), "");
        assert_eq!(run("${UNSET-6379}").unwrap(), "6379");
        assert_eq!(run("${TAG:-6379}").unwrap(), "7");
        assert_eq!(run("${UNSET:-${TAG}}").unwrap(), "7");
        assert_eq!(run("${UNSET:-a:b}").unwrap(), "a:b");
    }

    #[test]
    fn alternatives() {
        assert_eq!(run("${TAG:+on}").unwrap(), "on");
        assert_eq!(run("${EMPTY:+on}").unwrap(), "");
        assert_eq!(run("${EMPTY+on}").unwrap(), "on");
        assert_eq!(run("${UNSET+on}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${UNSET:?give a tag}").unwrap_err(),
            "required variable UNSET is missing a value: give a tag"
        );
        assert_eq!(
            run("${EMPTY:?}").unwrap_err(),
            "required variable EMPTY is missing a value: not set"
        );
        assert_eq!(run("${EMPTY?}").unwrap(), "");
        assert_eq!(run("${TAG:?x}").unwrap(), "7");
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        assert_eq!(run("echo $$HOME $${TAG}").unwrap(), "echo $HOME ${TAG}");
    }

    #[test]
    fn malformed_references_are_errors() {
        for bad in [
            "cost $5", "${TAG", "${}", "${TAG:}", "${TAG!x}", "a $ b", "${9X}",
        ] {
            let err = run(bad).unwrap_err();
            assert!(err.contains("invalid interpolation format"), "{bad}: {err}");
        }
    }
}
