use std::collections::HashMap;

use proptest::prelude::*;

use super::*;

#[test]
fn block_freed_in_a_transaction_is_not_reused_before_the_commit() {
    let mut counts = RefCounts::new(2).unwrap();
    let a = counts.alloc().unwrap();
    let b = counts.alloc().unwrap();
    assert_eq!(counts.alloc(), None);
    counts.dec(a).unwrap();
    assert_eq!(
        counts.alloc(),
        None,
        "freed block handed out inside its transaction"
    );
    counts.committed();
    assert_eq!(counts.alloc(), Some(a));
    assert_ne!(a, b);
}

#[test]
fn large_counts_survive_the_one_byte_table() {
    let mut counts = RefCounts::new(10).unwrap();
    counts.set(3, 100_000).unwrap();
    assert_eq!(counts.get(3).unwrap(), 100_000);
    assert_eq!(counts.dec(3).unwrap(), 99_999);
    counts.set(3, 2).unwrap();
    assert_eq!(counts.get(3).unwrap(), 2);
    assert!(counts.overflow_entries().is_empty());
}

#[test]
fn out_of_range_block_and_double_free_are_errors() {
    let mut counts = RefCounts::new(4).unwrap();
    assert!(counts.get(4).is_err());
    assert!(counts.inc(u64::MAX).is_err());
    assert!(counts.dec(1).is_err());
}

#[test]
fn changes_mark_their_bitmap_dirty() {
    let mut counts = RefCounts::new(3 * ENTRIES_PER_BITMAP).unwrap();
    counts.committed();
    counts.set(ENTRIES_PER_BITMAP + 5, 1).unwrap();
    assert_eq!(
        counts.dirty_bitmaps().iter().copied().collect::<Vec<_>>(),
        [1]
    );
    counts.grow(4 * ENTRIES_PER_BITMAP + 1).unwrap();
    let dirty: Vec<_> = counts.dirty_bitmaps().iter().copied().collect();
    assert_eq!(dirty, [1, 3, 4]);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc,
    Inc(u64),
    Dec(u64),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Alloc),
        2 => (0u64..64).prop_map(Op::Inc),
        2 => (0u64..64).prop_map(Op::Dec),
        1 => Just(Op::Commit),
    ]
}

proptest! {
    #[test]
    fn counts_match_a_model(ops in proptest::collection::vec(op(), 1..400)) {
        let mut counts = RefCounts::new(64).unwrap();
        let mut model: HashMap<u64, u32> = HashMap::new();
        let mut freed_now: Vec<u64> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc => {
                    if let Some(b) = counts.alloc() {
                        prop_assert_eq!(model.get(&b).copied().unwrap_or(0), 0);
                        prop_assert!(!freed_now.contains(&b));
                        model.insert(b, 1);
                    } else {
                        let free = (0..64).filter(|b| model.get(b).copied().unwrap_or(0) == 0
                            && !freed_now.contains(b)).count();
                        prop_assert_eq!(free, 0);
                    }
                }
                Op::Inc(b) if model.get(&b).copied().unwrap_or(0) > 0 => {
                    counts.inc(b).unwrap();
                    *model.get_mut(&b).unwrap() += 1;
                }
                Op::Dec(b) if model.get(&b).copied().unwrap_or(0) > 0 => {
                    counts.dec(b).unwrap();
                    let c = model.get_mut(&b).unwrap();
                    *c -= 1;
                    if *c == 0 {
                        freed_now.push(b);
                    }
                }
                Op::Commit => {
                    counts.committed();
                    freed_now.clear();
                }
                _ => {}
            }
        }
        let allocated = model.values().filter(|&&c| c > 0).count() as u64;
        prop_assert_eq!(counts.nr_allocated(), allocated);
        for b in 0..64 {
            prop_assert_eq!(counts.get(b).unwrap(), model.get(&b).copied().unwrap_or(0));
        }
        let overflow: Vec<_> = (0..64u64)
            .filter_map(|b| model.get(&b).filter(|&&c| c >= 3).map(|&c| (b, c)))
            .collect();
        prop_assert_eq!(counts.overflow_entries(), overflow);
    }
}

#[test]
fn a_block_given_back_unused_is_free_at_once() {
    let mut counts = RefCounts::new(4).unwrap();
    let b = counts.alloc().unwrap();
    let free = counts.nr_free();
    counts.unalloc(b).unwrap();
    assert_eq!(counts.nr_free(), free + 1);
    assert_eq!(counts.alloc(), Some(b + 1));
    counts.claim(b).unwrap();
    assert_eq!(counts.get(b).unwrap(), 1);
}

#[test]
fn a_block_freed_in_the_transaction_cannot_be_claimed() {
    let mut counts = RefCounts::new(4).unwrap();
    let b = counts.alloc().unwrap();
    counts.committed();
    counts.dec(b).unwrap();
    assert!(counts.claim(b).is_err());
    assert!(counts.unalloc(b).is_err(), "count is zero already");
}
