//! Mapping runs: validation, ordering and merging, shared by the parser and the writer.

use super::{Error, MappingRun};

/// Checks one run on its own: at least one block, no block number past 2^64.
pub(super) fn check_run(run: &MappingRun, line: u64) -> Result<(), Error> {
    if run.length == 0 || run.origin_end().is_none() || run.data_end().is_none() {
        return Err(Error::BadRun {
            line,
            origin_begin: run.origin_begin,
            data_begin: run.data_begin,
            length: run.length,
        });
    }
    Ok(())
}

/// Whether `next` continues `run`: the next thin block, the next data block, the same time.
/// That is the rule both versions of thin_dump use to grow a `range_mapping`.
fn continues(run: &MappingRun, next: &MappingRun) -> bool {
    run.time == next.time
        && run.origin_end() == Some(next.origin_begin)
        && run.data_end() == Some(next.data_begin)
}

/// Checks that `runs` are sorted by thin block and do not overlap. Every run must already have
/// passed [`check_run`].
pub(super) fn check_order(runs: &[MappingRun], owner: &dyn Fn() -> String) -> Result<(), Error> {
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.origin_begin < a.origin_begin {
            return Err(Error::UnsortedMappings {
                owner: owner(),
                first: a.origin_begin,
                second: b.origin_begin,
            });
        }
        if a.origin_end().is_none_or(|end| b.origin_begin < end) {
            return Err(Error::OverlappingMappings {
                owner: owner(),
                first: a.origin_begin,
                second: b.origin_begin,
            });
        }
    }
    Ok(())
}

/// Sorts `runs`, rejects overlaps and merges runs that continue each other, leaving the
/// canonical form of a device's mappings.
pub(super) fn normalise(
    runs: &mut Vec<MappingRun>,
    owner: &dyn Fn() -> String,
) -> Result<(), Error> {
    runs.sort_unstable_by_key(|run| run.origin_begin);
    check_order(runs, owner)?;
    let merged = coalesce(runs).collect();
    *runs = merged;
    Ok(())
}

/// Merges neighbours of sorted, non-overlapping `runs` that continue each other.
pub(super) fn coalesce(runs: &[MappingRun]) -> impl Iterator<Item = MappingRun> + '_ {
    let mut rest = runs.iter().peekable();
    std::iter::from_fn(move || {
        let mut run = *rest.next()?;
        while let Some(next) = rest.next_if(|next| continues(&run, next)) {
            // Never saturates: `next` ends at or before 2^64 and starts where `run` ends.
            run.length = run.length.saturating_add(next.length);
        }
        Some(run)
    })
}
