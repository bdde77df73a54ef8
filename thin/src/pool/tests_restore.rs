//! Pools made by `thin_restore` (thin-provisioning-tools 0.9 and 1.1) from XML, served with
//! the data their XML maps: the data is written into the data file at the blocks the XML
//! names, then read and written through served volumes.

use std::path::Path;

use rustbk_formats::suite::{self, pattern};

use super::{Pool, PoolOptions};
use crate::peers::{self, Peer};
use crate::testing::{flush, get, put, queue, us};
use crate::volume::ThinVolume;

const BS: u64 = 64 << 10;
/// Data blocks of the pools below.
const DATA_BLOCKS: u64 = 100;

/// A data file of [`DATA_BLOCKS`] blocks holding `pattern(b)` in each block `b` of `blocks`
/// and zeros elsewhere.
fn data_file(path: &Path, blocks: &[u64]) {
    let mut bytes = vec![0u8; us(DATA_BLOCKS * BS)];
    for &b in blocks {
        bytes[us(b * BS)..us((b + 1) * BS)].copy_from_slice(&pattern(b, us(BS)));
    }
    std::fs::write(path, bytes).unwrap();
}

/// What a volume of `len` blocks reads when its block `v` maps data block `d` for each
/// `(v, d)` of `map`, and zeros elsewhere.
fn expected(len: u64, map: &[(u64, u64)]) -> Vec<u8> {
    let mut out = vec![0u8; us(len * BS)];
    for &(v, d) in map {
        out[us(v * BS)..us((v + 1) * BS)].copy_from_slice(&pattern(d, us(BS)));
    }
    out
}

fn check_with_both_peers(meta: &Path, what: &str) {
    for peer in Peer::ALL {
        peers::thin_check(peer, meta).unwrap_or_else(|e| panic!("{what}, {peer:?}: {e}"));
    }
}

#[test]
fn a_pool_made_by_thin_restore_is_served_with_the_data_its_xml_maps() {
    let xml = r#"<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="100">
  <device dev_id="1" mapped_blocks="3" transaction="0" creation_time="0" snap_time="0">
    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>
    <single_mapping origin_block="5" data_block="7" time="0"/>
  </device>
</superblock>
"#;
    for peer in Peer::ALL {
        let dir = tempfile::tempdir().unwrap();
        let meta = peers::restore_str(peer, dir.path(), "pool", xml).unwrap();
        let data = dir.path().join("data");
        data_file(&data, &[7, 10, 11]);
        let pool = Pool::open(&meta, &data, PoolOptions::default()).unwrap();
        assert_eq!(pool.volumes().unwrap()[0].record.size, 6 * BS);
        let vol = ThinVolume::open_local(&pool, 1, Default::default()).unwrap();
        let mut q = queue(&vol);
        let want = expected(6, &[(0, 10), (1, 11), (5, 7)]);
        suite::assert_bytes(&get(&mut *q, 0, us(6 * BS)), &want, "restored pool");
        put(&mut *q, 4 * BS, &[1; 512]);
        flush(&mut *q);
        drop(q);
        drop(vol);
        drop(pool);
        check_with_both_peers(&meta, "after a first write");
    }
}

/// A device of a restored pool: its id, its length in blocks, and which data block each
/// mapped block of it maps.
type Device = (u64, u64, Vec<(u64, u64)>);

/// Device 1 and its snapshot, device 2, taken at time 1, after which device 2's block 2 was
/// written (a block of its own). They share data blocks 10, 11 and 20; device 1 alone holds
/// 12, and device 3, another thin device, holds a range of its own.
const SNAPSHOT_XML: &str = r#"<superblock uuid="" time="1" transaction="3" flags="0" version="2" data_block_size="128" nr_data_blocks="100">
  <device dev_id="1" mapped_blocks="4" transaction="0" creation_time="0" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="3" time="0"/>
    <single_mapping origin_block="7" data_block="20" time="0"/>
  </device>
  <device dev_id="2" mapped_blocks="4" transaction="1" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>
    <single_mapping origin_block="2" data_block="30" time="1"/>
    <single_mapping origin_block="7" data_block="20" time="0"/>
  </device>
  <device dev_id="3" mapped_blocks="3" transaction="2" creation_time="1" snap_time="1">
    <range_mapping origin_begin="1" data_begin="40" length="3" time="1"/>
  </device>
</superblock>
"#;

/// Every device of a restored pool with a snapshot reads what its XML maps. As in dm-thin,
/// a write into a block mapped before its device's last snapshot is copied to a new block,
/// even where only one device still maps it (device 1's block 2), and the other device keeps
/// the old data; a write into a block mapped since goes in place (device 3). Both tools still
/// check the pool.
#[test]
fn a_restored_pool_with_a_snapshot_serves_each_device_and_breaks_sharing_on_write() {
    for peer in Peer::ALL {
        let dir = tempfile::tempdir().unwrap();
        let meta = peers::restore_str(peer, dir.path(), "pool", SNAPSHOT_XML).unwrap();
        let data = dir.path().join("data");
        data_file(&data, &[10, 11, 12, 20, 30, 40, 41, 42]);
        let pool = Pool::open(&meta, &data, PoolOptions::default()).unwrap();
        let maps: [Device; 3] = [
            (1, 8, vec![(0, 10), (1, 11), (2, 12), (7, 20)]),
            (2, 8, vec![(0, 10), (1, 11), (2, 30), (7, 20)]),
            (3, 4, vec![(1, 40), (2, 41), (3, 42)]),
        ];
        let vols: Vec<ThinVolume> = maps
            .iter()
            .map(|(id, _, _)| ThinVolume::open_local(&pool, *id, Default::default()).unwrap())
            .collect();
        let mut qs: Vec<_> = vols.iter().map(queue).collect();
        for ((id, len, map), q) in maps.iter().zip(&mut qs) {
            let got = get(&mut **q, 0, us(len * BS));
            suite::assert_bytes(&got, &expected(*len, map), &format!("{peer:?} device {id}"));
        }
        put(&mut *qs[1], 512, &[2; 512]);
        put(&mut *qs[0], 2 * BS, &[1; 4096]);
        put(&mut *qs[2], BS, &[3; 4096]);
        let mut want: Vec<Vec<u8>> = maps.iter().map(|(_, l, m)| expected(*l, m)).collect();
        want[1][512..1024].fill(2);
        want[0][us(2 * BS)..us(2 * BS) + 4096].fill(1);
        want[2][us(BS)..us(BS) + 4096].fill(3);
        for (i, q) in qs.iter_mut().enumerate() {
            flush(&mut **q);
            let got = get(&mut **q, 0, want[i].len());
            suite::assert_bytes(&got, &want[i], &format!("{peer:?} device {} after", i + 1));
        }
        let stored = std::fs::read(&data).unwrap();
        for b in [10, 12] {
            let block = &stored[us(b * BS)..us((b + 1) * BS)];
            assert_eq!(
                block,
                &pattern(b, us(BS))[..],
                "{peer:?}: block {b} is copied"
            );
        }
        assert!(
            stored[us(40 * BS)..us(40 * BS) + 4096]
                .iter()
                .all(|&b| b == 3),
            "{peer:?}: device 3's block is written in place"
        );
        drop(qs);
        drop(vols);
        drop(pool);
        check_with_both_peers(&meta, "after the writes");
    }
}
