//! Responses (`blkif_response`).

use crate::abi::Abi;
use crate::bytes::{get_i16, get_u8, get_u64, put_i16, put_u8, put_u64};

/// One response: the request's cookie, its operation and a `BLKIF_RSP_*` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Response {
    /// The request's cookie.
    pub id: u64,
    /// The operation code echoed from the request.
    pub op: u8,
    /// One of [`crate::status`].
    pub status: i16,
}

/// Encodes `rsp` into `entry`, zeroing the padding. `entry` should be at least
/// [`Abi::response_size`] bytes; bytes that do not fit are dropped.
pub fn encode_response(abi: Abi, rsp: &Response, entry: &mut [u8]) {
    let l = abi.layout();
    let n = entry.len().min(l.response_size);
    entry[..n].fill(0);
    put_u64(entry, l.rsp_id, rsp.id);
    put_u8(entry, l.rsp_operation, rsp.op);
    put_i16(entry, l.rsp_status, rsp.status);
}

/// Decodes a response entry; missing bytes read as zero.
pub fn decode_response(abi: Abi, entry: &[u8]) -> Response {
    let l = abi.layout();
    Response {
        id: get_u64(entry, l.rsp_id),
        op: get_u8(entry, l.rsp_operation),
        status: get_i16(entry, l.rsp_status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{op, status};
    use proptest::prelude::*;

    #[test]
    fn response_fields_sit_at_blkif_h_offsets() {
        let rsp = Response {
            id: 0x0102_0304_0506_0708,
            op: op::WRITE,
            status: status::EOPNOTSUPP,
        };
        for abi in [Abi::X86_64, Abi::X86_32] {
            let mut e = [0xffu8; 16];
            encode_response(abi, &rsp, &mut e);
            assert_eq!(&e[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
            assert_eq!(e[8], 1);
            assert_eq!(e[9], 0, "padding is zeroed");
            assert_eq!(&e[10..12], &(-2i16).to_le_bytes());
            let untouched = if abi == Abi::X86_64 { 0 } else { 0xff };
            assert_eq!(e[12], untouched, "{abi:?} writes only its response size");
        }
    }

    proptest! {
        #[test]
        fn response_round_trips(id: u64, op: u8, status: i16, x32: bool) {
            let abi = if x32 { Abi::X86_32 } else { Abi::X86_64 };
            let rsp = Response { id, op, status };
            let mut e = vec![0u8; abi.response_size()];
            encode_response(abi, &rsp, &mut e);
            prop_assert_eq!(decode_response(abi, &e), rsp);
        }
    }
}
