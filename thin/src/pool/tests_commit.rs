//! A commit writes its blocks without the pool's lock: volumes go on provisioning and mapping
//! meanwhile, and the blocks it freed are not handed out before it is durable.

use std::sync::mpsc;
use std::time::Duration;

use super::{PoolOptions, VolumeSpec};
use crate::error::Error;
use crate::port::{NewMapping, PoolPort};
use crate::testing::{new_pool, thin_check};

const BS: u64 = 64 << 10;
/// Longer than any lock wait of a passing run; a commit that held the lock would wait for the
/// held data sync for ever.
const PATIENCE: Duration = Duration::from_secs(5);

fn volume(t: &crate::testing::TestPool) {
    let spec = VolumeSpec {
        size: 1 << 20,
        ..VolumeSpec::default()
    };
    t.pool.create_volume(1, spec).unwrap();
}

#[test]
fn a_commit_being_written_lets_a_volume_provision_and_map_meanwhile() {
    let t = new_pool(BS, 100, PoolOptions::default());
    volume(&t);
    let mut port = t.pool.open_port(1).unwrap();
    let first = port.provision(1).unwrap()[0];
    port.map(&[NewMapping {
        vblock: 0,
        block: first,
    }])
    .unwrap();
    let release = t.pool.hold_next_data_sync();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let committing = s.spawn(|| t.pool.commit());
        s.spawn(move || {
            let mapped = port.provision(1).and_then(|got| {
                port.map(&[NewMapping {
                    vblock: 1,
                    block: got[0],
                }])
            });
            let _ = tx.send(mapped.map(|()| port));
        });
        let during = rx.recv_timeout(PATIENCE);
        drop(release);
        committing.join().unwrap().unwrap();
        match during {
            Ok(Ok(port)) => drop(port),
            Ok(Err(e)) => panic!("provision or map failed: {e}"),
            Err(_) => panic!("the volume waited for the commit's writes"),
        }
    });
    // The second mapping went into the next transaction.
    t.pool.commit().unwrap();
    thin_check(&t.meta);
    let mut port = t.pool.open_port(1).unwrap();
    assert_eq!(port.lookup(0..2).unwrap().len(), 2);
}

#[test]
fn blocks_freed_by_a_commit_being_written_are_handed_out_only_once_it_is_durable() {
    let t = new_pool(BS, 4, PoolOptions::default());
    volume(&t);
    let mut port = t.pool.open_port(1).unwrap();
    let blocks = port.provision(4).unwrap();
    let maps: Vec<NewMapping> = (0..)
        .zip(&blocks)
        .map(|(vblock, &block)| NewMapping { vblock, block })
        .collect();
    port.map(&maps).unwrap();
    port.commit().unwrap();
    // The last commit maps every block; freeing one makes it free in this transaction
    // only: a crash before the next commit is durable falls back to where it is mapped.
    let freed = port.unmap(0..1).unwrap();
    assert_eq!(freed, vec![blocks[0]]);
    let release = t.pool.hold_next_data_sync();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let committing = s.spawn(|| t.pool.commit());
        s.spawn(move || {
            let _ = tx.send((port.provision(1), port));
        });
        let during = rx.recv_timeout(PATIENCE);
        drop(release);
        committing.join().unwrap().unwrap();
        let (got, mut port) = during.expect("provision waited for the commit's writes");
        assert!(
            matches!(got, Err(Error::DataFull(_))),
            "a block freed by a commit not yet durable was handed out: {got:?}"
        );
        // Durable now: the block may go out again.
        assert_eq!(port.provision(1).unwrap(), vec![blocks[0]]);
    });
}
