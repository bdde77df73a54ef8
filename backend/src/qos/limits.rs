//! What a disk's I/O limits are: QEMU's throttle options, by QEMU's names, and their checks.

use std::fmt;

/// The largest value any limit takes (QEMU's `THROTTLE_VALUE_MAX`).
pub const VALUE_MAX: u64 = 1_000_000_000_000_000;

/// What a bucket counts, and for which requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BucketKind {
    /// Bytes of reads and writes.
    BpsTotal,
    /// Bytes of reads.
    BpsRead,
    /// Bytes of writes.
    BpsWrite,
    /// Read and write requests.
    IopsTotal,
    /// Read requests.
    IopsRead,
    /// Write requests.
    IopsWrite,
}

impl BucketKind {
    /// Every kind, in the order of [`QosLimits::buckets`].
    pub const ALL: [BucketKind; 6] = [
        BucketKind::BpsTotal,
        BucketKind::BpsRead,
        BucketKind::BpsWrite,
        BucketKind::IopsTotal,
        BucketKind::IopsRead,
        BucketKind::IopsWrite,
    ];

    /// QEMU's name of the basic limit: `bps-total`, ..., `iops-write`.
    pub fn name(self) -> &'static str {
        match self {
            BucketKind::BpsTotal => "bps-total",
            BucketKind::BpsRead => "bps-read",
            BucketKind::BpsWrite => "bps-write",
            BucketKind::IopsTotal => "iops-total",
            BucketKind::IopsRead => "iops-read",
            BucketKind::IopsWrite => "iops-write",
        }
    }

    /// Whether it counts bytes (else requests).
    pub fn counts_bytes(self) -> bool {
        matches!(
            self,
            BucketKind::BpsTotal | BucketKind::BpsRead | BucketKind::BpsWrite
        )
    }

    /// Whether a read (`write` false) or a write (`write` true) is counted in it.
    pub fn applies_to(self, write: bool) -> bool {
        match self {
            BucketKind::BpsTotal | BucketKind::IopsTotal => true,
            BucketKind::BpsRead | BucketKind::IopsRead => !write,
            BucketKind::BpsWrite | BucketKind::IopsWrite => write,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The limit of one bucket: a rate and an optional burst, in bytes or requests per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLimit {
    /// The sustained rate (`iops-total`); 0: no limit.
    pub avg: u64,
    /// The burst rate (`iops-total-max`); 0: no burst beyond a tenth of a second of `avg`.
    pub max: u64,
    /// Seconds a burst at `max` may last (`iops-total-max-length`), at least 1.
    pub max_length: u64,
}

impl Default for BucketLimit {
    fn default() -> Self {
        BucketLimit {
            avg: 0,
            max: 0,
            max_length: 1,
        }
    }
}

/// The I/O limits of one disk. The default has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QosLimits {
    /// The limit of each bucket, indexed by [`BucketKind`] (`BucketKind::ALL` order).
    pub buckets: [BucketLimit; 6],
    /// Requests larger than this many bytes count as `size / iops_size` requests in the
    /// `iops-*` buckets (`iops-size`); 0: every request counts as one.
    pub iops_size: u64,
}

/// Which part of a bucket's limit a key sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Avg,
    Max,
    MaxLength,
}

/// A key named by QEMU's throttle option names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Bucket(BucketKind, Field),
    IopsSize,
}

impl Key {
    fn parse(name: &str) -> Option<Key> {
        if name == "iops-size" {
            return Some(Key::IopsSize);
        }
        let (base, field) = match name.strip_suffix("-max-length") {
            Some(base) => (base, Field::MaxLength),
            None => match name.strip_suffix("-max") {
                Some(base) => (base, Field::Max),
                None => (name, Field::Avg),
            },
        };
        let kind = BucketKind::ALL.into_iter().find(|k| k.name() == base)?;
        Some(Key::Bucket(kind, field))
    }
}

/// The names of every key, in a stable order: `bps-total`, `bps-total-max`,
/// `bps-total-max-length`, ..., `iops-write-max-length`, `iops-size`.
pub fn key_names() -> Vec<String> {
    let mut out = Vec::new();
    for kind in BucketKind::ALL {
        let name = kind.name();
        out.extend([
            name.to_owned(),
            format!("{name}-max"),
            format!("{name}-max-length"),
        ]);
    }
    out.push("iops-size".to_owned());
    out
}

/// A limit's value: a whole number from 0 to [`VALUE_MAX`], nothing else.
fn parse_value(value: &str) -> Result<u64, String> {
    let text = value.trim();
    let bad = || format!("not a whole number from 0 to {VALUE_MAX}");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u64>() {
        Ok(n) if n <= VALUE_MAX => Ok(n),
        _ => Err(bad()),
    }
}

impl QosLimits {
    /// The limit of one bucket.
    pub fn bucket(&self, kind: BucketKind) -> &BucketLimit {
        &self.buckets[kind.index()]
    }

    /// The limit of one bucket, to change.
    pub fn bucket_mut(&mut self, kind: BucketKind) -> &mut BucketLimit {
        &mut self.buckets[kind.index()]
    }

    /// True when no bucket has a rate: nothing is throttled.
    pub fn is_unlimited(&self) -> bool {
        self.buckets.iter().all(|b| b.avg == 0)
    }

    /// Sets the key `name` (QEMU's option name, e.g. `iops-total-max`) from its text; the
    /// reason if the name is unknown or the value is not a whole number in range. The
    /// combination is checked by [`QosLimits::validate`].
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let key = Key::parse(name.trim()).ok_or_else(|| {
            format!(
                "unknown QoS key {name:?} (QEMU's throttle names: iops-total, iops-read, \
                 iops-write, bps-total, bps-read, bps-write, each also with -max and \
                 -max-length, and iops-size)"
            )
        })?;
        let n = parse_value(value)?;
        match key {
            Key::IopsSize => self.iops_size = n,
            Key::Bucket(kind, Field::Avg) => self.bucket_mut(kind).avg = n,
            Key::Bucket(kind, Field::Max) => self.bucket_mut(kind).max = n,
            Key::Bucket(kind, Field::MaxLength) => self.bucket_mut(kind).max_length = n,
        }
        Ok(())
    }

    /// Limits from `key=value` pairs separated by commas (`iops-total=500,bps-read=1048576`),
    /// checked; `none` (what [`QosLimits`] prints without limits) or nothing: no limits.
    pub fn parse_list(text: &str) -> Result<QosLimits, String> {
        let mut limits = QosLimits::default();
        if text.trim() == "none" {
            return Ok(limits);
        }
        limits.merge_list(text)?;
        limits.validate()?;
        Ok(limits)
    }

    /// Sets the keys of a comma-separated `key=value` list, without checking the combination.
    pub fn merge_list(&mut self, text: &str) -> Result<(), String> {
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not KEY=VALUE"))?;
            self.set(name, value)
                .map_err(|why| format!("{}: {why}", name.trim()))?;
        }
        Ok(())
    }

    /// Checks the combination as QEMU does: a total limit excludes the read and write limits
    /// of its unit (for the rates and for the bursts), a burst needs a rate and may not be
    /// below it, and a burst length is at least 1 and needs a burst.
    pub fn validate(&self) -> Result<(), String> {
        for (total, parts) in [
            (
                BucketKind::BpsTotal,
                [BucketKind::BpsRead, BucketKind::BpsWrite],
            ),
            (
                BucketKind::IopsTotal,
                [BucketKind::IopsRead, BucketKind::IopsWrite],
            ),
        ] {
            let t = self.bucket(total);
            for part in parts {
                let p = self.bucket(part);
                if (t.avg > 0 && p.avg > 0) || (t.max > 0 && p.max > 0) {
                    return Err(format!(
                        "{} cannot be combined with {} (a total limit or separate read and \
                         write limits, as in QEMU)",
                        total.name(),
                        part.name()
                    ));
                }
            }
        }
        BucketKind::ALL
            .into_iter()
            .try_for_each(|k| check_bucket(k, self.bucket(k)))
    }

    /// The keys that differ from no limit, with their values, in [`key_names`] order.
    pub fn to_pairs(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for kind in BucketKind::ALL {
            let b = self.bucket(kind);
            let name = kind.name();
            let fields = [
                (name.to_owned(), b.avg, 0),
                (format!("{name}-max"), b.max, 0),
                (format!("{name}-max-length"), b.max_length, 1),
            ];
            out.extend(
                fields
                    .into_iter()
                    .filter(|f| f.1 != f.2)
                    .map(|f| (f.0, f.1)),
            );
        }
        if self.iops_size > 0 {
            out.push(("iops-size".to_owned(), self.iops_size));
        }
        out
    }
}

fn check_bucket(kind: BucketKind, b: &BucketLimit) -> Result<(), String> {
    let name = kind.name();
    if b.max > 0 && b.avg == 0 {
        return Err(format!("{name}-max needs {name} to be set"));
    }
    if b.max > 0 && b.max < b.avg {
        return Err(format!(
            "{name}-max ({}) cannot be lower than {name} ({})",
            b.max, b.avg
        ));
    }
    if b.max_length == 0 {
        return Err(format!("{name}-max-length must be at least 1 second"));
    }
    if b.max_length > 1 && b.max == 0 {
        return Err(format!("{name}-max-length needs {name}-max to be set"));
    }
    Ok(())
}

/// `key=value,...` for every limit set, or `none`.
impl fmt::Display for QosLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = self.to_pairs();
        if pairs.is_empty() {
            return f.write_str("none");
        }
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&text.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_qemu_name_sets_its_field_and_round_trips() {
        let names = key_names();
        assert_eq!(names.len(), 19);
        for (i, name) in names.iter().enumerate() {
            let mut l = QosLimits::default();
            let value = (i as u64 + 2) * 10;
            l.set(name, &value.to_string()).expect(name);
            assert_eq!(l.to_pairs(), vec![(name.clone(), value)], "{name}");
        }
        let mut l = QosLimits::default();
        l.set("iops-write-max-length", " 60\n").expect("trimmed");
        assert_eq!(l.bucket(BucketKind::IopsWrite).max_length, 60);
    }

    #[test]
    fn bad_names_and_values_are_refused_with_a_reason() {
        let mut l = QosLimits::default();
        let err = l.set("iops_total", "5").expect_err("underscore");
        assert!(
            err.contains("unknown QoS key") && err.contains("iops-total"),
            "{err}"
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "1e3",
            "12k",
            "abc",
            "1000000000000001",
            " ",
        ] {
            assert!(l.set("bps-read", bad).is_err(), "{bad:?}");
        }
        assert_eq!(l, QosLimits::default(), "nothing set by a refused value");
        assert!(l.set("bps-read", "1000000000000000").is_ok());
    }

    #[test]
    fn combinations_qemu_refuses_are_refused() {
        for (list, why) in [
            ("iops-total=100,iops-read=50", "cannot be combined"),
            ("bps-total=100,bps-write=50", "cannot be combined"),
            (
                "iops-total=10,iops-total-max=20,iops-write=1,iops-write-max=5",
                "combined",
            ),
            ("iops-read-max=100", "needs iops-read"),
            ("bps-total=100,bps-total-max=50", "cannot be lower"),
            ("iops-total=100,iops-total-max-length=0", "at least 1"),
            (
                "iops-total=100,iops-total-max-length=10",
                "needs iops-total-max",
            ),
            ("iops-total", "not KEY=VALUE"),
            ("iops-total=x", "iops-total: not a whole number"),
        ] {
            let err = QosLimits::parse_list(list).expect_err(list);
            assert!(err.contains(why), "{list}: {err}");
        }
    }

    #[test]
    fn good_lists_parse_and_print_back() {
        let text = "bps-read=1048576,bps-write=2097152,iops-total=500,iops-total-max=2000,\
                    iops-total-max-length=60,iops-size=4096";
        let l = QosLimits::parse_list(text).expect("valid");
        assert_eq!(l.bucket(BucketKind::IopsTotal).max, 2000);
        assert_eq!(l.iops_size, 4096);
        assert!(!l.is_unlimited());
        assert_eq!(l.to_string(), text);
        assert_eq!(QosLimits::parse_list(&l.to_string()), Ok(l));
        let none = QosLimits::parse_list("").expect("empty");
        assert!(none.is_unlimited());
        assert_eq!(none.to_string(), "none");
        assert_eq!(QosLimits::parse_list("none"), Ok(none));
        // A size without any rate limits nothing.
        assert!(
            QosLimits::parse_list("iops-size=4096")
                .expect("ok")
                .is_unlimited()
        );
    }
}
