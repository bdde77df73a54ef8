use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use rustbk_formats::EngineFile;
use rustbk_formats::engine::Access;

use super::*;
use crate::pdata::dev::MetaDev;
use crate::pdata::refs::RefCounts;

/// A metadata device of `nr_blocks` blocks in a temporary file, block 0 taken.
pub(crate) fn test_tm(nr_blocks: u64) -> (tempfile::TempDir, Tm) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(nr_blocks * 4096)
        .unwrap();
    let file = EngineFile::open(
        &path,
        Access::ReadWrite,
        rustbk_formats::CacheMode::Writeback,
    )
    .unwrap();
    let dev = MetaDev::new(Arc::new(file), nr_blocks).unwrap();
    let mut refs = RefCounts::new(nr_blocks).unwrap();
    refs.set(0, 1).unwrap();
    (dir, Tm::new(dev, refs))
}

/// Values are "data blocks" with counts of their own.
#[derive(Default)]
struct Counted(HashMap<u64, u32>);

fn as_u64(value: &[u8]) -> u64 {
    u64::from_le_bytes(value.try_into().unwrap())
}

impl ValueRefs for Counted {
    fn inc(&mut self, _: &mut Tm, value: &[u8]) -> Result<()> {
        *self.0.entry(as_u64(value)).or_default() += 1;
        Ok(())
    }

    fn dec(&mut self, _: &mut Tm, value: &[u8]) -> Result<()> {
        let c = self
            .0
            .get_mut(&as_u64(value))
            .expect("dec of an unknown value");
        *c -= 1;
        Ok(())
    }
}

fn commit(tm: &mut Tm) {
    tm.write_all().unwrap();
}

fn contents(tm: &mut Tm, root: u64) -> BTreeMap<u64, u64> {
    let mut out = BTreeMap::new();
    for_each(tm, root, 8, &mut |k, v| {
        out.insert(k, as_u64(v));
        Ok(())
    })
    .unwrap();
    out
}

/// Checks node fill, and that metadata and value counts equal a recount from `roots`.
fn check_counts(tm: &mut Tm, roots: &[u64], values: &Counted) {
    let mut node_refs: HashMap<u64, u32> = HashMap::new();
    let mut value_refs: HashMap<u64, u32> = HashMap::new();
    let mut seen = HashSet::new();
    for &root in roots {
        *node_refs.entry(root).or_default() += 1;
        visit_nodes(tm, root, 8, &mut |at, node, depth| {
            if !seen.insert(at) {
                return Ok(false);
            }
            if depth > 0 {
                assert!(node.len() >= node.min_entries(), "node {at} underfull");
            }
            for i in 0..node.len() {
                match node.leaf {
                    true => *value_refs.entry(as_u64(node.value(i))).or_default() += 1,
                    false => *node_refs.entry(node.child(i)).or_default() += 1,
                }
            }
            Ok(true)
        })
        .unwrap();
    }
    for (&b, &c) in &node_refs {
        assert_eq!(tm.count(b).unwrap(), c, "count of node {b}");
    }
    assert_eq!(
        tm.refs.nr_allocated(),
        node_refs.len() as u64 + 1,
        "leaked nodes"
    );
    for (&v, &c) in &values.0 {
        assert_eq!(
            value_refs.get(&v).copied().unwrap_or(0),
            c,
            "count of value {v}"
        );
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64),
    Remove(u64),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..3000, 0u64..1000).prop_map(|(k, v)| Op::Insert(k, v)),
        4 => (0u64..3000).prop_map(Op::Remove),
        1 => Just(Op::Commit),
    ]
}

fn apply(
    tm: &mut Tm,
    root: u64,
    op: &Op,
    model: &mut BTreeMap<u64, u64>,
    vals: &mut Counted,
) -> u64 {
    match *op {
        Op::Insert(k, v) => {
            let (root, old) = insert(tm, root, k, &v.to_le_bytes(), vals).unwrap();
            *vals.0.entry(v).or_default() += 1;
            if let Some(old) = &old {
                vals.dec(tm, old).unwrap();
            }
            assert_eq!(old.map(|o| as_u64(&o)), model.insert(k, v));
            root
        }
        Op::Remove(k) => {
            let (root, old) = remove(tm, root, 8, k, vals).unwrap();
            if let Some(old) = &old {
                vals.dec(tm, old).unwrap();
            }
            assert_eq!(old.map(|o| as_u64(&o)), model.remove(&k));
            root
        }
        Op::Commit => {
            commit(tm);
            root
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn tree_matches_a_model_and_counts_match_a_recount(
        ops in proptest::collection::vec(op(), 1..2500),
        keep_every in 1u64..8,
    ) {
        let (_dir, mut tm) = test_tm(4096);
        let mut vals = Counted::default();
        let mut root = empty(&mut tm, 8).unwrap();
        let mut model = BTreeMap::new();
        for op in &ops {
            root = apply(&mut tm, root, op, &mut model, &mut vals);
        }
        // Then drain most keys, in an order that is neither ascending nor descending.
        let drained: Vec<u64> = model.keys().copied().filter(|k| k % keep_every != 0).collect();
        for k in drained.iter().step_by(2).chain(drained.iter().skip(1).step_by(2).rev()) {
            root = apply(&mut tm, root, &Op::Remove(*k), &mut model, &mut vals);
        }
        check_counts(&mut tm, &[root], &vals);
        root = apply(&mut tm, root, &Op::Commit, &mut model, &mut vals);
        for op in &ops {
            root = apply(&mut tm, root, op, &mut model, &mut vals);
        }
        prop_assert_eq!(contents(&mut tm, root), model.clone());
        for (&k, &v) in model.iter().take(50) {
            prop_assert_eq!(lookup(&mut tm, root, 8, k).unwrap().map(|x| as_u64(&x)), Some(v));
        }
        let absent = (0..3000).find(|k| !model.contains_key(k)).unwrap_or(9999);
        prop_assert_eq!(lookup(&mut tm, root, 8, absent).unwrap(), None);
        check_counts(&mut tm, &[root], &vals);
    }

    #[test]
    fn a_shared_tree_changed_through_one_root_leaves_the_other_intact(
        before in proptest::collection::vec(op(), 1..1500),
        after in proptest::collection::vec(op(), 1..1500),
    ) {
        let (_dir, mut tm) = test_tm(4096);
        let mut vals = Counted::default();
        let mut origin = empty(&mut tm, 8).unwrap();
        let mut model = BTreeMap::new();
        for op in &before {
            origin = apply(&mut tm, origin, op, &mut model, &mut vals);
        }
        tm.inc(origin).unwrap();
        let mut snap = origin;
        let frozen = model.clone();
        for op in &after {
            snap = apply(&mut tm, snap, op, &mut model, &mut vals);
        }
        prop_assert_eq!(contents(&mut tm, origin), frozen);
        prop_assert_eq!(contents(&mut tm, snap), model);
        check_counts(&mut tm, &[origin, snap], &vals);
        delete(&mut tm, origin, 8, &mut vals).unwrap();
        check_counts(&mut tm, &[snap], &vals);
        delete(&mut tm, snap, 8, &mut vals).unwrap();
        prop_assert_eq!(tm.refs.nr_allocated(), 1);
        prop_assert!(vals.0.values().all(|&c| c == 0));
    }
}

#[test]
fn committed_tree_reads_back_from_disk() {
    let (_dir, mut tm) = test_tm(1024);
    let mut root = empty(&mut tm, 8).unwrap();
    for k in 0..5000u64 {
        root = insert(&mut tm, root, k * 7, &k.to_le_bytes(), &mut NoRefs)
            .unwrap()
            .0;
    }
    commit(&mut tm);
    let dev = tm.dev().clone();
    let refs = tm.refs.clone();
    let mut fresh = Tm::new(dev, refs);
    let got = contents(&mut fresh, root);
    assert_eq!(got.len(), 5000);
    assert_eq!(got[&(4999 * 7)], 4999);
    assert_eq!(range(&mut fresh, root, 8, 70..99).unwrap().len(), 5);
}

#[test]
fn range_returns_exactly_the_keys_inside() {
    let (_dir, mut tm) = test_tm(1024);
    let mut root = empty(&mut tm, 8).unwrap();
    for k in (0..20_000u64).step_by(3) {
        root = insert(&mut tm, root, k, &k.to_le_bytes(), &mut NoRefs)
            .unwrap()
            .0;
    }
    let got: Vec<u64> = range(&mut tm, root, 8, 1000..2000)
        .unwrap()
        .iter()
        .map(|e| e.0)
        .collect();
    let want: Vec<u64> = (1000..2000).filter(|k| k % 3 == 0).collect();
    assert_eq!(got, want);
}

#[test]
fn node_with_a_child_outside_its_key_range_is_refused() {
    let (_dir, mut tm) = test_tm(1024);
    let mut root = empty(&mut tm, 8).unwrap();
    for k in 0..1000u64 {
        root = insert(&mut tm, root, k, &k.to_le_bytes(), &mut NoRefs)
            .unwrap()
            .0;
    }
    let mut node = read_node(&mut tm, root, 8).unwrap();
    assert!(!node.leaf);
    let (a, b) = (node.child(0), node.child(1));
    node.set_child(0, b);
    node.set_child(1, a);
    write_node(&mut tm, root, &node).unwrap();
    let err = for_each(&mut tm, root, 8, &mut |_, _| Ok(())).unwrap_err();
    assert!(
        err.to_string().contains("outside its parent's range"),
        "{err}"
    );
}

#[test]
fn cycle_is_refused_as_too_deep() {
    let (_dir, mut tm) = test_tm(64);
    let root = tm.new_block().unwrap();
    let mut node = Node::new(false, 8);
    node.insert_at(0, 0, &root.to_le_bytes());
    write_node(&mut tm, root, &node).unwrap();
    let err = lookup(&mut tm, root, 8, 5).unwrap_err();
    assert!(err.to_string().contains("deeper than"), "{err}");
    assert!(for_each(&mut tm, root, 8, &mut |_, _| Ok(())).is_err());
}

#[test]
fn internal_node_without_entries_is_refused_by_insert() {
    let (_dir, mut tm) = test_tm(64);
    let root = tm.new_block().unwrap();
    write_node(&mut tm, root, &Node::new(false, 8)).unwrap();
    commit(&mut tm);
    let inserted = insert(&mut tm, root, 5, &5u64.to_le_bytes(), &mut NoRefs);
    assert!(
        matches!(&inserted, Err(Error::BadBlock { why, .. }) if why.contains("no entries")),
        "{inserted:?}"
    );
}

/// Three levels of nodes, shared between two roots half-way: every split and shadow of the
/// in-place insertion runs at each depth.
#[test]
fn a_three_level_tree_shared_half_way_keeps_both_versions() {
    let (_dir, mut tm) = test_tm(16384);
    let mut vals = Counted::default();
    let mut root = empty(&mut tm, 8).unwrap();
    let mut model = BTreeMap::new();
    let mut key = 12345u64;
    let mut frozen = None;
    for n in 0..60_000u64 {
        key = key
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = key >> 44;
        root = apply(&mut tm, root, &Op::Insert(k, n), &mut model, &mut vals);
        if n % 7000 == 6999 {
            root = apply(&mut tm, root, &Op::Commit, &mut model, &mut vals);
        }
        if n == 30_000 {
            tm.inc(root).unwrap();
            frozen = Some((root, model.clone()));
        }
    }
    let (origin, frozen) = frozen.unwrap();
    assert!(
        depth(&mut tm, root) >= 3,
        "the tree must reach three levels"
    );
    assert_eq!(contents(&mut tm, root), model);
    assert_eq!(contents(&mut tm, origin), frozen);
    check_counts(&mut tm, &[origin, root], &vals);
}

fn depth(tm: &mut Tm, root: u64) -> usize {
    let mut at = root;
    for d in 1..MAX_DEPTH {
        let node = read_node(tm, at, 8).unwrap();
        if node.leaf {
            return d;
        }
        at = node.child(0);
    }
    MAX_DEPTH
}
