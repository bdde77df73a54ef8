//! `rustbk bench --data-paths`: the data paths side by side (map with persistent grants,
//! with and without fixed buffers, map per request, grant copy), 4 KiB random read and write
//! at queue depth 32.

use rustbk_backend::worker::DataPath;

use super::compare::{Case, Comparison, variant};
use crate::cli::BackendArgs;

/// The data paths, each from the common backend flags.
pub(super) fn comparison(base: &BackendArgs) -> Comparison {
    let variants = vec![
        variant("map, persistent", base, |b| {
            b.data_path = DataPath::Map;
            b.no_persistent = false;
            b.fixed_buffers = false;
        }),
        variant("map, persistent, fixed", base, |b| {
            b.data_path = DataPath::Map;
            b.no_persistent = false;
            b.fixed_buffers = true;
        }),
        variant("map per request", base, |b| {
            b.data_path = DataPath::Map;
            b.no_persistent = true;
        }),
        variant("grant copy", base, |b| b.data_path = DataPath::Copy),
    ];
    let cases = ["randread", "randwrite"].map(|rw| Case {
        rw,
        qd: 32,
        bs: 4096,
    });
    Comparison {
        title: "--data-paths",
        variants,
        cases: cases.to_vec(),
    }
}
