//! TSIG keys as BIND writes them.
//!
//! An operator makes the key on the DNS server with `tsig-keygen -a hmac-sha256 NAME` and
//! hands Lifeboat the file. (Knot's `keymgr -t NAME hmac-sha256` prints the same three
//! values as YAML; they go into a `key` block of this form.) Reading that file as it is, instead of asking for the name, the
//! algorithm and the secret separately, removes the copy-and-paste step where keys usually
//! go wrong.

use std::fmt;
use std::path::Path;

use base64::Engine as _;

/// The HMAC a TSIG key signs with. Only the ones hickory can compute are here: MD5 and
/// SHA-1 keys are refused when the key file is read, not when the first update fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name BIND uses in key files (`hmac-sha256`), which is also its DNS name.
    pub fn as_str(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    fn from_bind(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
            _ => None,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A shared secret for signing DNS messages (RFC 8945). `Debug` never shows the secret,
/// so a key can sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    name: String,
    algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a key file could not be used. Every message names the key (or says there was
/// none) and what to change.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("TSIG key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("TSIG key file: {0}")]
    Syntax(String),
    #[error("TSIG key file has no `key \"NAME\" {{ ... }};` block: make one with `tsig-keygen -a hmac-sha256 NAME`")]
    NoKey,
    #[error("TSIG key file holds {count} keys ({names}): give Lifeboat a file with only the key it should use")]
    SeveralKeys { count: usize, names: String },
    #[error("TSIG key {key}: no `algorithm` line; add `algorithm hmac-sha256;` (or whatever the server's copy says)")]
    MissingAlgorithm { key: String },
    #[error("TSIG key {key}: no `secret` line; copy the key file from the DNS server again")]
    MissingSecret { key: String },
    #[error("TSIG key {key}: the secret is not valid base64 ({reason}); copy the key file from the DNS server again")]
    BadSecret { key: String, reason: String },
    #[error("TSIG key {key}: algorithm {algorithm} is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512 (`tsig-keygen -a hmac-sha256 {key}`)")]
    UnsupportedAlgorithm { key: String, algorithm: String },
    #[error("TSIG key name {key:?} is not a valid DNS name: {reason}")]
    BadName { key: String, reason: String },
}

impl TsigKey {
    /// A key from its parts; `secret` is the raw bytes (not base64).
    pub fn new(name: &str, algorithm: TsigAlgorithm, secret: Vec<u8>) -> Result<TsigKey, KeyError> {
        let name = name.trim_end_matches('.').to_string();
        if let Err(e) = hickory_proto::rr::Name::from_ascii(&name) {
            return Err(KeyError::BadName {
                key: name,
                reason: e.to_string(),
            });
        }
        if secret.is_empty() {
            return Err(KeyError::MissingSecret { key: name });
        }
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }

    /// The key's name, without a trailing dot, as in the key file.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn algorithm(&self) -> TsigAlgorithm {
        self.algorithm
    }

    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    /// Reads a key file as `tsig-keygen` writes it:
    ///
    /// ```text
    /// key "lifeboat" {
    ///         algorithm hmac-sha256;
    ///         secret "rLZyGzW0Hc8cG8nJr6dQ2Z3D3t3+R9dEZC4lU6WQJ3c=";
    /// };
    /// ```
    ///
    /// BIND's comments (`#`, `//`, `/* */`) are allowed; the file must hold exactly one key.
    pub fn parse_bind(text: &str) -> Result<TsigKey, KeyError> {
        let tokens = tokenize(text)?;
        let mut keys = Vec::new();
        let mut pos = 0;
        while pos < tokens.len() {
            match &tokens[pos] {
                Token::Word(w) if w.eq_ignore_ascii_case("key") => {
                    let (block, next) = parse_key_block(&tokens, pos + 1)?;
                    keys.push(block);
                    pos = next;
                }
                // Other statements (an `options` block from a pasted named.conf) are
                // skipped whole so a key can be found inside a bigger file.
                _ => pos = skip_statement(&tokens, pos),
            }
        }
        match keys.len() {
            0 => Err(KeyError::NoKey),
            1 => keys.pop().expect("one key").into_key(),
            count => Err(KeyError::SeveralKeys {
                count,
                names: keys
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// [`TsigKey::parse_bind`] on a file.
    pub fn load_bind_file(path: &Path) -> Result<TsigKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        TsigKey::parse_bind(&text)
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Semi,
}

fn tokenize(text: &str) -> Result<Vec<Token>, KeyError> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '{' => tokens.push(Token::Open),
            '}' => tokens.push(Token::Close),
            ';' => tokens.push(Token::Semi),
            '#' => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'/') => skip_line(&mut chars),
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        Some('/') if prev == '*' => break,
                        Some(c) => prev = c,
                        None => return Err(KeyError::Syntax("a /* comment is not closed".into())),
                    }
                }
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => {
                            return Err(KeyError::Syntax("a quoted string is not closed".into()))
                        }
                    }
                }
                tokens.push(Token::Quoted(s));
            }
            c => {
                let mut s = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"') {
                        break;
                    }
                    s.push(n);
                    chars.next();
                }
                tokens.push(Token::Word(s));
            }
        }
    }
    Ok(tokens)
}

fn skip_line(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

/// Skips one statement starting at `pos`: up to its `;`, stepping over nested blocks.
fn skip_statement(tokens: &[Token], mut pos: usize) -> usize {
    let mut depth = 0usize;
    while pos < tokens.len() {
        match tokens[pos] {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Semi if depth == 0 => return pos + 1,
            _ => {}
        }
        pos += 1;
    }
    pos
}

/// What one `key` block said, before it is checked.
struct KeyBlock {
    name: String,
    algorithm: Option<String>,
    secret: Option<String>,
}

impl KeyBlock {
    fn into_key(self) -> Result<TsigKey, KeyError> {
        let key = self.name;
        let Some(algorithm) = self.algorithm else {
            return Err(KeyError::MissingAlgorithm { key });
        };
        let Some(secret) = self.secret else {
            return Err(KeyError::MissingSecret { key });
        };
        let Some(alg) = TsigAlgorithm::from_bind(&algorithm) else {
            return Err(KeyError::UnsupportedAlgorithm { key, algorithm });
        };
        let compact: String = secret.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| KeyError::BadSecret {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        TsigKey::new(&key, alg, bytes)
    }
}

fn parse_key_block(tokens: &[Token], mut pos: usize) -> Result<(KeyBlock, usize), KeyError> {
    let name = match tokens.get(pos) {
        Some(Token::Quoted(s) | Token::Word(s)) => s.clone(),
        _ => {
            return Err(KeyError::Syntax(
                "`key` must be followed by the key's name".into(),
            ))
        }
    };
    pos += 1;
    if tokens.get(pos) != Some(&Token::Open) {
        return Err(KeyError::Syntax(format!(
            "key {name}: expected `{{` after the name"
        )));
    }
    pos += 1;
    let mut block = KeyBlock {
        name,
        algorithm: None,
        secret: None,
    };
    loop {
        match tokens.get(pos) {
            Some(Token::Close) => {
                pos += 1;
                if tokens.get(pos) == Some(&Token::Semi) {
                    pos += 1;
                }
                return Ok((block, pos));
            }
            Some(Token::Word(field)) => {
                let value = match tokens.get(pos + 1) {
                    Some(Token::Word(v) | Token::Quoted(v)) => v.clone(),
                    _ => {
                        return Err(KeyError::Syntax(format!(
                            "key {}: `{field}` has no value",
                            block.name
                        )))
                    }
                };
                if tokens.get(pos + 2) != Some(&Token::Semi) {
                    return Err(KeyError::Syntax(format!(
                        "key {}: `{field} {}` must end with `;`",
                        block.name,
                        // A secret must not end up in an error message.
                        if field.eq_ignore_ascii_case("secret") {
                            "\"...\""
                        } else {
                            &value
                        }
                    )));
                }
                match field.to_ascii_lowercase().as_str() {
                    "algorithm" => block.algorithm = Some(value),
                    "secret" => block.secret = Some(value),
                    _ => {}
                }
                pos += 3;
            }
            Some(_) => pos = skip_statement(tokens, pos),
            None => {
                return Err(KeyError::Syntax(format!(
                    "key {}: the block is not closed with `}};`",
                    block.name
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As `tsig-keygen -a hmac-sha256 lifeboat-update` printed it (BIND 9.18).
    const GOOD: &str = r#"key "lifeboat-update" {
	algorithm hmac-sha256;
	secret "Vt9lVHi2p3ng2x1nOXQ4pL9uNnlZKo9hJa0ViuD3l0I=";
};
"#;

    #[test]
    fn reads_a_tsig_keygen_file() {
        let key = TsigKey::parse_bind(GOOD).unwrap();
        assert_eq!(key.name(), "lifeboat-update");
        assert_eq!(key.algorithm(), TsigAlgorithm::HmacSha256);
        assert_eq!(key.secret().len(), 32);
    }

    #[test]
    fn debug_hides_the_secret() {
        let key = TsigKey::parse_bind(GOOD).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("lifeboat-update"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("Vt9l"), "{shown}");
    }

    #[test]
    fn comments_unquoted_names_and_other_statements_are_fine() {
        let text = "# made by hand\noptions { directory \"/x\"; };\n/* the key */\nkey up.example. { // name\n algorithm HMAC-SHA512; secret \"AAEC\nAw==\"; };";
        let key = TsigKey::parse_bind(text).unwrap();
        assert_eq!(key.name(), "up.example");
        assert_eq!(key.algorithm(), TsigAlgorithm::HmacSha512);
        assert_eq!(key.secret(), &[0, 1, 2, 3]);
    }

    #[test]
    fn missing_secret_is_named() {
        let err = TsigKey::parse_bind("key \"k1\" { algorithm hmac-sha256; };").unwrap_err();
        assert!(
            matches!(err, KeyError::MissingSecret { ref key } if key == "k1"),
            "{err}"
        );
        assert!(err.to_string().contains("no `secret` line"), "{err}");
    }

    #[test]
    fn missing_algorithm_is_named() {
        let err = TsigKey::parse_bind("key k1 { secret \"AAAA\"; };").unwrap_err();
        assert!(matches!(err, KeyError::MissingAlgorithm { .. }), "{err}");
    }

    #[test]
    fn bad_base64_is_refused_without_echoing_the_secret() {
        let err = TsigKey::parse_bind("key k1 { algorithm hmac-sha256; secret \"not*base64!\"; };")
            .unwrap_err();
        assert!(matches!(err, KeyError::BadSecret { .. }), "{err}");
        assert!(!err.to_string().contains("not*base64"), "{err}");
    }

    #[test]
    fn unknown_algorithm_is_refused_with_the_fix() {
        for alg in ["hmac-md5", "hmac-sha1", "rot13"] {
            let text = format!("key k1 {{ algorithm {alg}; secret \"AAAA\"; }};");
            let err = TsigKey::parse_bind(&text).unwrap_err();
            assert!(
                matches!(err, KeyError::UnsupportedAlgorithm { ref algorithm, .. } if algorithm == alg),
                "{err}"
            );
            assert!(err.to_string().contains("use hmac-sha256"), "{err}");
        }
    }

    #[test]
    fn empty_and_double_files_are_refused() {
        assert!(matches!(
            TsigKey::parse_bind("# nothing\n"),
            Err(KeyError::NoKey)
        ));
        let two = format!("{GOOD}{}", GOOD.replace("lifeboat-update", "other"));
        let err = TsigKey::parse_bind(&two).unwrap_err();
        assert!(err.to_string().contains("lifeboat-update, other"), "{err}");
    }

    #[test]
    fn unclosed_block_is_a_syntax_error() {
        let err = TsigKey::parse_bind("key k1 { algorithm hmac-sha256;").unwrap_err();
        assert!(matches!(err, KeyError::Syntax(_)), "{err}");
    }
}
