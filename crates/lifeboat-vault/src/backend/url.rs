//! The vault URL: which storage, which bucket or folder, which prefix inside it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::error::BackendError;

/// Where a vault lives. Written `file:///abs/path`, `s3://bucket/prefix` or
/// `az://container/prefix` (`azure://` is accepted too). Credentials never go in the URL;
/// they come from the environment (see [`super::S3Settings`], [`super::AzureSettings`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum VaultUrl {
    /// A folder on a local or mounted file system.
    Folder { path: PathBuf },
    /// An S3 bucket (AWS or any S3-compatible server), optionally under a prefix.
    S3 { bucket: String, prefix: String },
    /// An Azure Blob Storage container, optionally under a prefix.
    Azure { container: String, prefix: String },
}

impl VaultUrl {
    /// Parses a vault URL; the error names the URL (with any password masked) and what is
    /// wrong with it.
    pub fn parse(input: &str) -> Result<VaultUrl, BackendError> {
        let bad = |reason: String| BackendError::BadUrl {
            url: redact(input),
            reason,
        };
        let input = input.trim();
        if input.starts_with('/') {
            return Err(bad(format!("a folder is written file://{input}")));
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            return Err(bad(
                "expected file:///abs/path, s3://bucket/prefix or az://container/prefix".into(),
            ));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("query strings and fragments are not allowed".into()));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "file" => parse_folder(input).map_err(bad),
            "s3" => {
                let (bucket, prefix) = split_authority(rest).map_err(&bad)?;
                check_bucket(bucket, "S3 bucket", true).map_err(&bad)?;
                Ok(VaultUrl::S3 {
                    bucket: bucket.to_owned(),
                    prefix: check_prefix(prefix).map_err(bad)?,
                })
            }
            "az" | "azure" => {
                let (container, prefix) = split_authority(rest).map_err(&bad)?;
                check_bucket(container, "Azure container", false).map_err(&bad)?;
                Ok(VaultUrl::Azure {
                    container: container.to_owned(),
                    prefix: check_prefix(prefix).map_err(bad)?,
                })
            }
            other => Err(bad(format!(
                "unknown scheme `{other}`: use file://, s3:// or az://"
            ))),
        }
    }

    /// The folder of a `file://` vault.
    pub fn folder(&self) -> Option<&Path> {
        match self {
            VaultUrl::Folder { path } => Some(path),
            _ => None,
        }
    }
}

fn parse_folder(input: &str) -> Result<VaultUrl, String> {
    let url = url::Url::parse(input).map_err(|e| format!("not a valid URL: {e}"))?;
    match url.host_str() {
        None | Some("") | Some("localhost") => {}
        Some(host) => {
            return Err(format!(
                "the path must be absolute (file:///abs/path, three slashes); \
                 `{host}` was read as a host name"
            ))
        }
    }
    let path = url
        .to_file_path()
        .map_err(|()| "the path must be absolute: file:///abs/path".to_string())?;
    if !path.is_absolute() {
        return Err("the path must be absolute: file:///abs/path".into());
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err("the path may not contain `..`".into());
    }
    if path.parent().is_none() {
        return Err("the vault cannot be the root directory".into());
    }
    Ok(VaultUrl::Folder { path })
}

fn split_authority(rest: &str) -> Result<(&str, &str), String> {
    if rest.contains('@') {
        return Err("credentials do not go in the URL; set them in the environment instead".into());
    }
    Ok(rest.split_once('/').unwrap_or((rest, "")))
}

/// S3 bucket names: 3–63 of `a-z 0-9 . -`; Azure containers: 3–63 of `a-z 0-9 -`.
fn check_bucket(name: &str, what: &str, dots: bool) -> Result<(), String> {
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    if name.is_empty() {
        return Err(format!("the {what} name is missing"));
    }
    if !(3..=63).contains(&name.len()) || !name.chars().all(ok_char) {
        let allowed = if dots { "a-z 0-9 . -" } else { "a-z 0-9 -" };
        return Err(format!(
            "`{name}` is not a valid {what} name (3-63 characters of {allowed})"
        ));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<String, String> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    super::key::check(prefix).map_err(|reason| format!("prefix `{prefix}`: {reason}"))?;
    Ok(prefix.to_owned())
}

/// The URL as given, with a password (if someone put one in) replaced by `***`.
pub(crate) fn redact(input: &str) -> String {
    match url::Url::parse(input) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => input.to_owned(),
    }
}

impl fmt::Display for VaultUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, bucket, prefix) = match self {
            VaultUrl::Folder { path } => return write!(f, "file://{}", path.display()),
            VaultUrl::S3 { bucket, prefix } => ("s3", bucket, prefix),
            VaultUrl::Azure { container, prefix } => ("az", container, prefix),
        };
        write!(f, "{scheme}://{bucket}")?;
        if !prefix.is_empty() {
            write!(f, "/{prefix}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for VaultUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultUrl({self})")
    }
}

impl FromStr for VaultUrl {
    type Err = BackendError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VaultUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        let f = VaultUrl::parse("file:///srv/vault").unwrap();
        assert_eq!(f.folder(), Some(Path::new("/srv/vault")));
        assert_eq!(f.to_string(), "file:///srv/vault");
        let s = VaultUrl::parse("s3://my-bucket/dr/site1/").unwrap();
        assert_eq!(
            s,
            VaultUrl::S3 {
                bucket: "my-bucket".into(),
                prefix: "dr/site1".into()
            }
        );
        assert_eq!(s.to_string(), "s3://my-bucket/dr/site1");
        let a = VaultUrl::parse("azure://vaults").unwrap();
        assert_eq!(a.to_string(), "az://vaults");
    }

    #[test]
    fn refuses_with_reasons() {
        for (input, needle) in [
            ("file://relative/path", "absolute"),
            ("/srv/vault", "file:///srv/vault"),
            ("s3://", "name is missing"),
            ("s3://UPPER/x", "not a valid S3 bucket"),
            ("s3://bucket/../x", "`..`"),
            ("az://my.container", "not a valid Azure container"),
            ("ftp://host/x", "unknown scheme"),
            ("s3://b/x?versionId=1", "query"),
            ("vault", "expected file:///abs/path"),
        ] {
            let err = VaultUrl::parse(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(err.contains(input.trim_end_matches('/')), "{input}: {err}");
        }
    }

    #[test]
    fn never_echoes_a_password() {
        let err = VaultUrl::parse("s3://AKIA:topsecret@bucket/x")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("topsecret"), "{err}");
        assert!(err.contains("environment"), "{err}");
    }
}
