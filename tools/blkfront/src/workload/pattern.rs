//! Verify patterns: every block's bytes derive from its offset and a generation number.

/// Fills `buf` with the pattern of the block at byte `offset`, generation `gen`.
///
/// Each 512-byte sector starts with its own offset and the generation (so a misplaced sector is
/// recognisable in a dump) followed by a xorshift stream seeded by both.
pub fn fill(buf: &mut [u8], offset: u64, generation: u32) {
    for (i, sector) in buf.chunks_mut(512).enumerate() {
        let pos = offset + (i as u64) * 512;
        let mut x = seed(pos, generation);
        for (j, word) in sector.chunks_mut(8).enumerate() {
            let v = match j {
                0 => pos,
                1 => u64::from(generation) | 0x5255_5354_0000_0000,
                _ => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                }
            };
            word.copy_from_slice(&v.to_le_bytes()[..word.len()]);
        }
    }
}

fn seed(pos: u64, generation: u32) -> u64 {
    let mut z = pos ^ (u64::from(generation) << 40) ^ 0x9E37_79B9_7F4A_7C15;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) | 1
}

/// Checks `buf` against the pattern; generation 0 means "never written" and expects zeros.
pub fn matches(buf: &[u8], offset: u64, generation: u32, scratch: &mut Vec<u8>) -> bool {
    if generation == 0 {
        return buf.iter().all(|b| *b == 0);
    }
    scratch.resize(buf.len(), 0);
    fill(scratch, offset, generation);
    scratch.as_slice() == buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_offset_and_generation() {
        let (mut a, mut b, mut c) = (vec![0u8; 4096], vec![0u8; 4096], vec![0u8; 4096]);
        fill(&mut a, 4096, 1);
        fill(&mut b, 8192, 1);
        fill(&mut c, 4096, 2);
        assert_ne!(a, b);
        assert_ne!(a, c);
        let mut scratch = Vec::new();
        assert!(matches(&a, 4096, 1, &mut scratch));
        assert!(!matches(&a, 4096, 2, &mut scratch));
        assert!(matches(&[0u8; 512], 0, 0, &mut scratch));
        assert!(!matches(&a[..512], 4096, 0, &mut scratch));
    }
}
