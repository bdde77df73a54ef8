//! The URIs the plugins trade: an SR is `file:///FOLDER` (qcow2 files in a folder) or
//! `thin:///POOL` (a rustbk thin pool), a volume's data is `rustbk:PARAMS`, where PARAMS is
//! what rustbk's backend reads from `params` (`qcow2:/FOLDER/KEY.qcow2`, `thin:/POOL:ID`),
//! percent-encoded. xapi-storage-script picks the datapath
//! plugin by the scheme, so the datapath plugin's folder is `datapath/rustbk`.

use std::path::PathBuf;

use super::error::{Result, SmapiError};

/// The scheme of volume URIs, and the datapath plugin's folder name.
pub const DATA_SCHEME: &str = "rustbk";

/// The absolute path of a `SCHEME:///PATH` SR uri.
pub fn sr_path(uri: &str, scheme: &str) -> Result<PathBuf> {
    let bad = || SmapiError::SrDoesNotExist(format!("{uri} (expected {scheme}:///PATH)"));
    let rest = uri
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(bad)?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let path = decode(rest).ok_or_else(bad)?;
    if !path.starts_with('/') {
        return Err(bad());
    }
    Ok(PathBuf::from(path))
}

/// The `SCHEME://` uri of a path.
pub fn sr_uri(scheme: &str, path: &std::path::Path) -> String {
    format!("{scheme}://{}", encode(&path.to_string_lossy()))
}

/// The volume URI that carries backend `params`.
pub fn data_uri(params: &str) -> String {
    format!("{DATA_SCHEME}:{}", encode(params))
}

/// The backend `params` of a volume URI.
pub fn data_params(uri: &str) -> Result<String> {
    let bad = || SmapiError::Internal(format!("{uri} is not a {DATA_SCHEME}: URI"));
    let rest = uri
        .strip_prefix(DATA_SCHEME)
        .and_then(|r| r.strip_prefix(':'))
        .ok_or_else(bad)?;
    decode(rest).filter(|p| !p.is_empty()).ok_or_else(bad)
}

fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/:".contains(&b)
}

/// Percent-encodes every byte but unreserved ones, `/` and `:`.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes [`encode`]; `None` on a bad escape or bytes that are not UTF-8.
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_survive_a_round_trip_through_a_data_uri() {
        let params = "qcow2:/srv/my sr/100%.qcow2";
        let uri = data_uri(params);
        assert_eq!(uri, "rustbk:qcow2:/srv/my%20sr/100%25.qcow2");
        assert_eq!(data_params(&uri).unwrap(), params);
    }

    #[test]
    fn sr_uris_name_absolute_folders_only() {
        assert_eq!(
            sr_path("file:///srv/a%20b", "file").unwrap(),
            PathBuf::from("/srv/a b")
        );
        assert!(sr_path("nfs://host/x", "file").is_err());
        assert!(sr_path("file://relative", "file").is_err());
        assert!(sr_path("file:///bad%2", "file").is_err());
        assert_eq!(sr_uri("thin", "/p".as_ref()), "thin:///p");
        assert!(data_params("file:///x").is_err());
    }
}
