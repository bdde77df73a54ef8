//! Indirect segment pages: arrays of 512 `blkif_request_segment`s per page.

use crate::abi::{SEGMENT_SIZE, SEGS_PER_INDIRECT_FRAME};
use crate::error::Error;
use crate::request::{BadReason, Segment, check_segment, indirect_pages};
use crate::shared::{SharedMemory, SharedMemoryExt};
use crate::types::PAGE_SIZE;

/// Copies `nr_segments` segments out of the mapped indirect pages, once, and
/// validates each (`first_sect <= last_sect <= 7`).
pub fn decode_indirect_segments(
    pages: &[&dyn SharedMemory],
    nr_segments: u16,
) -> Result<Vec<Segment>, BadReason> {
    let mut out = Vec::with_capacity(usize::from(nr_segments));
    decode_indirect_segments_into(pages, nr_segments, &mut out)?;
    Ok(out)
}

/// Like [`decode_indirect_segments`], reusing `out` (cleared first) to avoid
/// an allocation per request.
pub fn decode_indirect_segments_into(
    pages: &[&dyn SharedMemory],
    nr_segments: u16,
    out: &mut Vec<Segment>,
) -> Result<(), BadReason> {
    out.clear();
    let needed =
        indirect_pages(nr_segments).ok_or(BadReason::IndirectSegmentCount { nr: nr_segments })?;
    let missing = BadReason::IndirectPages {
        pages: pages.len(),
        needed,
    };
    let pages = pages.get(..needed).ok_or(missing)?;
    let mut remaining = usize::from(nr_segments);
    let mut buf = [0u8; PAGE_SIZE];
    for page in pages {
        let count = remaining.min(SEGS_PER_INDIRECT_FRAME);
        let bytes = &mut buf[..count * SEGMENT_SIZE];
        page.read_bytes(0, bytes).map_err(|_| missing)?;
        for chunk in bytes.chunks_exact(SEGMENT_SIZE) {
            let seg = Segment::from_bytes(chunk);
            check_segment(out.len(), &seg)?;
            out.push(seg);
        }
        remaining -= count;
    }
    Ok(())
}

/// Writes `segments` into indirect pages, 512 per page (for the emulated
/// frontend). Fails if the pages cannot hold them all.
pub fn encode_indirect_segments(
    pages: &[&dyn SharedMemory],
    segments: &[Segment],
) -> Result<(), Error> {
    let needed = segments.len().div_ceil(SEGS_PER_INDIRECT_FRAME);
    let too_few = Error::IndirectPages {
        pages: pages.len(),
        segments: segments.len(),
    };
    let pages = pages.get(..needed).ok_or(too_few.clone())?;
    let mut buf = [0u8; PAGE_SIZE];
    for (page, chunk) in pages.iter().zip(segments.chunks(SEGS_PER_INDIRECT_FRAME)) {
        for (slot, seg) in buf.chunks_exact_mut(SEGMENT_SIZE).zip(chunk) {
            slot.copy_from_slice(&seg.to_bytes());
        }
        page.write_bytes(0, &buf[..chunk.len() * SEGMENT_SIZE])
            .map_err(|_| too_few.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::HeapMemory;
    use crate::types::GrantRef;

    fn segs(n: usize) -> Vec<Segment> {
        (0..n)
            .map(|i| Segment {
                gref: GrantRef(u32::try_from(i).unwrap() + 100),
                first_sect: u8::try_from(i % 4).unwrap(),
                last_sect: 7,
            })
            .collect()
    }

    #[test]
    fn segments_round_trip_across_page_boundaries() {
        let mem: Vec<HeapMemory> = (0..3).map(|_| HeapMemory::new(1)).collect();
        let pages: Vec<&dyn SharedMemory> = mem.iter().map(|m| m as &dyn SharedMemory).collect();
        let want = segs(1100);
        encode_indirect_segments(&pages, &want).unwrap();
        assert_eq!(decode_indirect_segments(&pages, 1100).unwrap(), want);
        assert_eq!(decode_indirect_segments(&pages, 513).unwrap(), want[..513]);
    }

    #[test]
    fn too_few_pages_is_refused() {
        let mem = HeapMemory::new(1);
        let pages: [&dyn SharedMemory; 1] = [&mem];
        assert_eq!(
            decode_indirect_segments(&pages, 513),
            Err(BadReason::IndirectPages {
                pages: 1,
                needed: 2
            })
        );
        assert!(encode_indirect_segments(&pages, &segs(513)).is_err());
    }

    #[test]
    fn zero_or_too_many_segments_is_refused() {
        let mem = HeapMemory::new(1);
        let pages: [&dyn SharedMemory; 1] = [&mem];
        assert_eq!(
            decode_indirect_segments(&pages, 0),
            Err(BadReason::IndirectSegmentCount { nr: 0 })
        );
        assert_eq!(
            decode_indirect_segments(&pages, 4097),
            Err(BadReason::IndirectSegmentCount { nr: 4097 })
        );
    }

    #[test]
    fn bad_segment_in_page_is_refused_with_its_index() {
        let mem = HeapMemory::new(1);
        let pages: [&dyn SharedMemory; 1] = [&mem];
        let mut s = segs(5);
        s[3].first_sect = 6;
        s[3].last_sect = 5;
        encode_indirect_segments(&pages, &s).unwrap();
        assert_eq!(
            decode_indirect_segments(&pages, 5),
            Err(BadReason::SegmentSectors {
                index: 3,
                first: 6,
                last: 5
            })
        );
        s[3].first_sect = 0;
        s[3].last_sect = 8;
        encode_indirect_segments(&pages, &s).unwrap();
        assert_eq!(
            decode_indirect_segments(&pages, 5),
            Err(BadReason::SegmentSectors {
                index: 3,
                first: 0,
                last: 8
            })
        );
    }

    #[test]
    fn small_page_is_refused_not_overread() {
        // A "page" of 8 bytes cannot hold 2 segments.
        let t = HeapMemory::with_len(8);
        let pages: [&dyn SharedMemory; 1] = [&t];
        assert_eq!(
            decode_indirect_segments(&pages, 2),
            Err(BadReason::IndirectPages {
                pages: 1,
                needed: 1
            })
        );
        assert_eq!(decode_indirect_segments(&pages, 1).map(|v| v.len()), Ok(1));
    }
}
