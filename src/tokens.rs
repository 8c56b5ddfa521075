//! Join and control tokens: what they look like, how a manager derives
//! them, and how any node checks one.
//!
//! ```text
//! join token:     LBMTKN-2-<CA certificate SHA-256, 64 hex>-<secret, 32 hex>
//! control token:  LBMCTL-2-<CA certificate SHA-256, 64 hex>-<secret, 32 hex>
//! secret  = HMAC-SHA256(CA key, kind | seed)[..16]     (a manager, which holds the CA key)
//! registry: TokenSeed { seed, hash: SHA-256(secret) }   (every node)
//! ```
//!
//! The digest pins the CA: a joiner or lbctl trusts the TLS server whose
//! chain holds a CA with that digest, and no other. The secret is checked
//! by hashing it and comparing in constant time with the registry's hash,
//! so every node can check a control token, and a copy of the registry
//! (a worker's) gives neither a token nor a way to make one. Rotation
//! writes a new seed; the old token's hash no longer matches.

use lbmesh_tls::ClusterCa;
use raft_state::random::{self, RandomError};
use raft_state::state::{TokenKind, TokenSeed};
use sha2::{Digest, Sha256};

use lbmesh_api::token::{TokenParts, CONTROL_PREFIX, JOIN_PREFIX};

/// A token taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token(TokenParts);

/// Which family a token is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Join,
    Control,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Self::Join => JOIN_PREFIX,
            Self::Control => CONTROL_PREFIX,
        }
    }
}

impl Token {
    /// Parses a token of `family`; the error says what is wrong with it.
    pub fn parse(text: &str, family: Family) -> Result<Self, String> {
        TokenParts::parse(text, family.prefix()).map(Self)
    }

    /// Hex SHA-256 of the CA certificate the token pins.
    pub fn ca_digest(&self) -> &str {
        &self.0.ca_digest
    }

    /// Whether this token's secret is the one `seed` records, compared in
    /// constant time.
    pub fn matches(&self, seed: &TokenSeed) -> bool {
        lbmesh_api::token::same_token(&seed.hash, &hash(&self.0.secret))
    }
}

fn family_of(kind: TokenKind) -> Family {
    match kind {
        TokenKind::Manager | TokenKind::Worker => Family::Join,
        TokenKind::Control => Family::Control,
    }
}

fn hash(secret: &[u8]) -> String {
    encode_hex(&Sha256::digest(secret))
}

fn secret_of(ca: &ClusterCa, kind: TokenKind, seed: &str) -> [u8; 16] {
    ca.derive_secret(&[kind.as_str().as_bytes(), seed.as_bytes()])
}

/// A new seed for a `kind` token (bootstrap, rotation).
pub fn new_seed(ca: &ClusterCa, kind: TokenKind) -> Result<TokenSeed, RandomError> {
    let seed = random::hex_secret(16)?;
    let secret = secret_of(ca, kind, &seed);
    Ok(TokenSeed {
        hash: hash(&secret),
        seed,
    })
}

/// The token `seed` stands for, as a manager prints it.
pub fn token_text(ca: &ClusterCa, kind: TokenKind, seed: &TokenSeed) -> String {
    let secret = secret_of(ca, kind, &seed.seed);
    format!(
        "{}{}-{}",
        family_of(kind).prefix(),
        ca.digest(),
        encode_hex(&secret)
    )
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_token_matches_its_seed_and_no_other() {
        let ca = ClusterCa::generate("c").unwrap();
        let worker = new_seed(&ca, TokenKind::Worker).unwrap();
        let manager = new_seed(&ca, TokenKind::Manager).unwrap();
        let text = token_text(&ca, TokenKind::Worker, &worker);
        assert!(
            text.starts_with(&format!("LBMTKN-2-{}-", ca.digest())),
            "{text}"
        );
        let token = Token::parse(&text, Family::Join).unwrap();
        assert!(token.matches(&worker));
        assert!(!token.matches(&manager));
        // The registry's record holds neither the secret nor the token.
        let secret = text.rsplit('-').next().unwrap();
        assert!(!worker.seed.contains(secret) && !worker.hash.contains(secret));
        // Another CA derives another secret from the same seed.
        let other = ClusterCa::generate("c").unwrap();
        let forged = token_text(&other, TokenKind::Worker, &worker);
        assert!(!Token::parse(&forged, Family::Join)
            .unwrap()
            .matches(&worker));
        let control = token_text(&ca, TokenKind::Control, &worker);
        assert!(control.starts_with("LBMCTL-2-"), "{control}");
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let error = |text: &str, family| Token::parse(text, family).unwrap_err();
        assert!(error("LBMTKN-1-aa-bb", Family::Join).contains("before cluster certificates"));
        assert!(error("nope", Family::Control).contains("start with LBMCTL-2-"));
        assert!(error("LBMTKN-2-abc", Family::Join).contains("a CA digest and a secret"));
        assert!(error("LBMTKN-2-ab-cd", Family::Join).contains("64 hex"));
        let digest = "a".repeat(64);
        assert!(error(&format!("LBMTKN-2-{digest}-xyz"), Family::Join).contains("32 hex"));
        let token = Token::parse(
            &format!("LBMCTL-2-{digest}-{}", "b".repeat(32)),
            Family::Control,
        )
        .unwrap();
        assert!(!format!("{token:?}").contains("bbbb"));
    }
}
