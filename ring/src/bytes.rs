//! Little-endian field access on private byte copies of ring entries.
//! Reads past the end yield zero bytes; writes past the end are dropped.

/// `N` bytes at `off`, zero-filled where `b` is too short.
fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        if let Some(v) = off.checked_add(i).and_then(|j| b.get(j)) {
            *o = *v;
        }
    }
    out
}

/// Writes `bytes` at `off`, dropping what does not fit.
fn put<const N: usize>(b: &mut [u8], off: usize, bytes: [u8; N]) {
    for (i, v) in bytes.into_iter().enumerate() {
        if let Some(o) = off.checked_add(i).and_then(|j| b.get_mut(j)) {
            *o = v;
        }
    }
}

pub(crate) fn get_u8(b: &[u8], off: usize) -> u8 {
    get::<1>(b, off)[0]
}

pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(get(b, off))
}

pub(crate) fn get_i16(b: &[u8], off: usize) -> i16 {
    i16::from_le_bytes(get(b, off))
}

pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get(b, off))
}

pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get(b, off))
}

pub(crate) fn put_u8(b: &mut [u8], off: usize, v: u8) {
    put(b, off, [v]);
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    put(b, off, v.to_le_bytes());
}

pub(crate) fn put_i16(b: &mut [u8], off: usize, v: i16) {
    put(b, off, v.to_le_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    put(b, off, v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    put(b, off, v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_read_zero_and_drop_writes() {
        let mut b = [0u8; 3];
        put_u32(&mut b, 1, 0x0403_0201);
        assert_eq!(b, [0, 1, 2]);
        assert_eq!(get_u32(&b, 1), 0x0201);
        assert_eq!(get_u64(&b, usize::MAX), 0);
    }
}
