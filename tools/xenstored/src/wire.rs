//! The xenstore wire protocol (`xen/include/public/io/xs_wire.h`).
//!
//! Every message is a 16-byte header `{type, req_id, tx_id, len}` (native
//! endian `u32`s, little-endian on every platform rustbk supports) followed by
//! `len <= XENSTORE_PAYLOAD_MAX` bytes of payload, usually NUL-terminated
//! strings.

use std::io::{self, Read, Write};

/// Maximum payload length in either direction (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Maximum length of an absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Maximum length of a path relative to a domain's home (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;
/// Size of the message header in bytes.
pub const HEADER_LEN: usize = 16;
/// `DOMID_SELF`, accepted by `IS_DOMAIN_INTRODUCED`.
pub const DOMID_SELF: u32 = 0x7FF0;
/// First reserved domain id (`DOMID_FIRST_RESERVED`).
pub const DOMID_FIRST_RESERVED: u32 = 0x7FF0;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control,
    /// `XS_DIRECTORY`.
    Directory,
    /// `XS_READ`.
    Read,
    /// `XS_GET_PERMS`.
    GetPerms,
    /// `XS_WATCH`.
    Watch,
    /// `XS_UNWATCH`.
    Unwatch,
    /// `XS_TRANSACTION_START`.
    TransactionStart,
    /// `XS_TRANSACTION_END`.
    TransactionEnd,
    /// `XS_INTRODUCE`.
    Introduce,
    /// `XS_RELEASE`.
    Release,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath,
    /// `XS_WRITE`.
    Write,
    /// `XS_MKDIR`.
    Mkdir,
    /// `XS_RM`.
    Rm,
    /// `XS_SET_PERMS`.
    SetPerms,
    /// `XS_WATCH_EVENT`.
    WatchEvent,
    /// `XS_ERROR`.
    Error,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced,
    /// `XS_RESUME`.
    Resume,
    /// `XS_SET_TARGET`.
    SetTarget,
    /// `XS_RESET_WATCHES`.
    ResetWatches,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart,
}

impl MsgType {
    /// The wire value of this type.
    pub fn to_u32(self) -> u32 {
        match self {
            MsgType::Control => 0,
            MsgType::Directory => 1,
            MsgType::Read => 2,
            MsgType::GetPerms => 3,
            MsgType::Watch => 4,
            MsgType::Unwatch => 5,
            MsgType::TransactionStart => 6,
            MsgType::TransactionEnd => 7,
            MsgType::Introduce => 8,
            MsgType::Release => 9,
            MsgType::GetDomainPath => 10,
            MsgType::Write => 11,
            MsgType::Mkdir => 12,
            MsgType::Rm => 13,
            MsgType::SetPerms => 14,
            MsgType::WatchEvent => 15,
            MsgType::Error => 16,
            MsgType::IsDomainIntroduced => 17,
            MsgType::Resume => 18,
            MsgType::SetTarget => 19,
            MsgType::ResetWatches => 21,
            MsgType::DirectoryPart => 22,
        }
    }

    /// Decodes a wire value; `None` for unknown types (20 was `XS_RESTRICT`).
    pub fn from_u32(value: u32) -> Option<MsgType> {
        const TABLE: [Option<MsgType>; 23] = [
            Some(MsgType::Control),
            Some(MsgType::Directory),
            Some(MsgType::Read),
            Some(MsgType::GetPerms),
            Some(MsgType::Watch),
            Some(MsgType::Unwatch),
            Some(MsgType::TransactionStart),
            Some(MsgType::TransactionEnd),
            Some(MsgType::Introduce),
            Some(MsgType::Release),
            Some(MsgType::GetDomainPath),
            Some(MsgType::Write),
            Some(MsgType::Mkdir),
            Some(MsgType::Rm),
            Some(MsgType::SetPerms),
            Some(MsgType::WatchEvent),
            Some(MsgType::Error),
            Some(MsgType::IsDomainIntroduced),
            Some(MsgType::Resume),
            Some(MsgType::SetTarget),
            None,
            Some(MsgType::ResetWatches),
            Some(MsgType::DirectoryPart),
        ];
        usize::try_from(value)
            .ok()
            .and_then(|i| TABLE.get(i).copied().flatten())
    }
}

/// Error names a xenstored may send (`xsd_errors[]` in `xs_wire.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Errno {
    /// Invalid argument.
    Einval,
    /// Permission denied.
    Eacces,
    /// Already exists.
    Eexist,
    /// Is a directory.
    Eisdir,
    /// No such node.
    Enoent,
    /// Out of memory.
    Enomem,
    /// Quota exceeded.
    Enospc,
    /// I/O error.
    Eio,
    /// Directory not empty.
    Enotempty,
    /// Operation not implemented.
    Enosys,
    /// Read-only.
    Erofs,
    /// Busy.
    Ebusy,
    /// Transaction conflict: try again.
    Eagain,
    /// Already connected.
    Eisconn,
    /// Too big.
    E2big,
    /// Operation not permitted.
    Eperm,
}

const ERRNO_NAMES: [(Errno, &str); 16] = [
    (Errno::Einval, "EINVAL"),
    (Errno::Eacces, "EACCES"),
    (Errno::Eexist, "EEXIST"),
    (Errno::Eisdir, "EISDIR"),
    (Errno::Enoent, "ENOENT"),
    (Errno::Enomem, "ENOMEM"),
    (Errno::Enospc, "ENOSPC"),
    (Errno::Eio, "EIO"),
    (Errno::Enotempty, "ENOTEMPTY"),
    (Errno::Enosys, "ENOSYS"),
    (Errno::Erofs, "EROFS"),
    (Errno::Ebusy, "EBUSY"),
    (Errno::Eagain, "EAGAIN"),
    (Errno::Eisconn, "EISCONN"),
    (Errno::E2big, "E2BIG"),
    (Errno::Eperm, "EPERM"),
];

impl Errno {
    /// The name sent on the wire, e.g. `"ENOENT"`.
    pub fn name(self) -> &'static str {
        ERRNO_NAMES
            .iter()
            .find(|(e, _)| *e == self)
            .map_or("EINVAL", |(_, n)| n)
    }

    /// Parses a wire name (without the trailing NUL).
    pub fn from_name(name: &str) -> Option<Errno> {
        ERRNO_NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(e, _)| *e)
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Raw message type (may be unknown).
    pub msg_type: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id, 0 outside transactions.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Decodes a header from its 16 wire bytes.
    pub fn decode(raw: &[u8; HEADER_LEN]) -> Header {
        let word = |i: usize| u32::from_le_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        Header {
            msg_type: word(0),
            req_id: word(4),
            tx_id: word(8),
            len: word(12),
        }
    }

    /// Encodes the header to its 16 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        raw[0..4].copy_from_slice(&self.msg_type.to_le_bytes());
        raw[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        raw[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        raw[12..16].copy_from_slice(&self.len.to_le_bytes());
        raw
    }
}

/// A complete message: header fields plus payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Raw message type.
    pub msg_type: u32,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload bytes (at most [`PAYLOAD_MAX`]).
    pub payload: Vec<u8>,
}

impl Message {
    /// Builds a message of a known type.
    pub fn new(msg_type: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            msg_type: msg_type.to_u32(),
            req_id,
            tx_id,
            payload,
        }
    }

    /// Serialises header and payload into one buffer. Fails if the payload
    /// exceeds [`PAYLOAD_MAX`].
    pub fn to_bytes(&self) -> io::Result<Vec<u8>> {
        let len = payload_len(self.payload.len())?;
        let header = Header {
            msg_type: self.msg_type,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&self.payload);
        Ok(out)
    }

    /// Writes the message to `w` in one `write_all`.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.to_bytes()?)
    }

    /// Reads one message. A header announcing more than [`PAYLOAD_MAX`] bytes
    /// is an `InvalidData` error (the stream cannot be resynchronised).
    pub fn read_from(r: &mut impl Read) -> io::Result<Message> {
        let mut raw = [0u8; HEADER_LEN];
        r.read_exact(&mut raw)?;
        let header = Header::decode(&raw);
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        if len > PAYLOAD_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("Payload length {len} exceeds {PAYLOAD_MAX}"),
            ));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Ok(Message {
            msg_type: header.msg_type,
            req_id: header.req_id,
            tx_id: header.tx_id,
            payload,
        })
    }

    /// The decoded type, if known.
    pub fn kind(&self) -> Option<MsgType> {
        MsgType::from_u32(self.msg_type)
    }
}

fn payload_len(len: usize) -> io::Result<u32> {
    if len > PAYLOAD_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("Payload length {len} exceeds {PAYLOAD_MAX}"),
        ));
    }
    u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Splits a payload into its NUL-terminated strings, like the C daemon's
/// `get_strings()`: bytes after the last NUL are not a string.
pub fn nul_strings(payload: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    while let Some(pos) = rest.iter().position(|&b| b == 0) {
        out.push(&rest[..pos]);
        rest = &rest[pos + 1..];
    }
    out
}

/// The single argument of a payload that must hold exactly one NUL, at the
/// end (the C daemon's `onearg()`).
pub fn one_arg(payload: &[u8]) -> Option<&[u8]> {
    match payload.split_last() {
        Some((0, body)) if !body.contains(&0) => Some(body),
        _ => None,
    }
}

/// Joins strings into a payload, each followed by a NUL.
pub fn join_nul<S: AsRef<[u8]>>(parts: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(p.as_ref());
        out.push(0);
    }
    out
}

/// C `atoi()` semantics on bytes: optional blanks and sign, then digits;
/// garbage yields 0, overflow wraps like the 32-bit C conversion.
pub fn atoi(s: &[u8]) -> i32 {
    let mut i = 0;
    while s.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    let negative = s.get(i) == Some(&b'-');
    if matches!(s.get(i), Some(b'-' | b'+')) {
        i += 1;
    }
    let mut value: i64 = 0;
    while let Some(d) = s.get(i).filter(|b| b.is_ascii_digit()) {
        value = value.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        i += 1;
    }
    let value = if negative { -value } else { value };
    // Truncation mirrors what C callers observe on overflow.
    #[allow(clippy::cast_possible_truncation)]
    let out = value as i32;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            msg_type: 2,
            req_id: 0x0102_0304,
            tx_id: 7,
            len: 5,
        };
        let raw = h.encode();
        assert_eq!(&raw[4..8], &[4, 3, 2, 1]);
        assert_eq!(Header::decode(&raw), h);
    }

    #[test]
    fn message_types_round_trip_and_restrict_is_unknown() {
        for v in 0..=22u32 {
            match MsgType::from_u32(v) {
                Some(t) => assert_eq!(t.to_u32(), v),
                None => assert_eq!(v, 20),
            }
        }
        assert_eq!(MsgType::from_u32(23), None);
        assert_eq!(MsgType::from_u32(0xffff), None);
    }

    #[test]
    fn oversized_payload_is_rejected_on_read() {
        let h = Header {
            msg_type: 2,
            req_id: 1,
            tx_id: 0,
            len: 1_000_000,
        };
        let err = Message::read_from(&mut &h.encode()[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn strings_and_one_arg_follow_c_rules() {
        assert_eq!(nul_strings(b"a\0bc\0tail"), vec![&b"a"[..], &b"bc"[..]]);
        assert_eq!(one_arg(b"abc\0"), Some(&b"abc"[..]));
        assert_eq!(one_arg(b"abc"), None);
        assert_eq!(one_arg(b"a\0b\0"), None);
        assert_eq!(one_arg(b""), None);
    }

    #[test]
    fn atoi_matches_c() {
        assert_eq!(atoi(b"42"), 42);
        assert_eq!(atoi(b" -7x"), -7);
        assert_eq!(atoi(b"junk"), 0);
    }

    #[test]
    fn errno_names_round_trip() {
        assert_eq!(Errno::Enoent.name(), "ENOENT");
        assert_eq!(Errno::from_name("EAGAIN"), Some(Errno::Eagain));
        assert_eq!(Errno::from_name("EQUOTA"), None);
    }
}
