//! A `BufRead` adapter that counts lines and refuses to hand out more than a fixed number of
//! bytes between two marks, so that one element (or one stretch of text) cannot make the XML
//! reader buffer an unbounded amount of memory.

use std::io::{self, BufRead, Read};

/// Wraps a `BufRead`; the parser calls [`Limited::mark`] after every event.
pub(super) struct Limited<R> {
    inner: R,
    /// Newlines consumed so far.
    newlines: u64,
    /// Bytes consumed since the last mark.
    since_mark: usize,
    limit: usize,
    exceeded: bool,
}

impl<R: BufRead> Limited<R> {
    pub(super) fn new(inner: R, limit: usize) -> Self {
        Limited {
            inner,
            newlines: 0,
            since_mark: 0,
            limit,
            exceeded: false,
        }
    }

    /// Starts a new budget of `limit` bytes.
    pub(super) fn mark(&mut self) {
        self.since_mark = 0;
    }

    /// The 1-based line of the last byte consumed.
    pub(super) fn line(&self) -> u64 {
        self.newlines.saturating_add(1)
    }

    /// Whether a read was refused because the budget ran out.
    pub(super) fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl<R: BufRead> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Limited<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.since_mark > self.limit {
            self.exceeded = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "XML element too long",
            ));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if amt == 0 {
            return;
        }
        // The bytes being consumed are still in the inner buffer: fill_buf only returns them.
        if let Ok(buffered) = self.inner.fill_buf() {
            let taken = &buffered[..amt.min(buffered.len())];
            let newlines = taken.iter().filter(|&&b| b == b'\n').count();
            self.newlines = self
                .newlines
                .saturating_add(u64::try_from(newlines).unwrap_or(u64::MAX));
        }
        self.since_mark = self.since_mark.saturating_add(amt);
        self.inner.consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_of_consumed_bytes() {
        let mut r = Limited::new(&b"a\nb\nc"[..], 100);
        let mut s = String::new();
        r.read_line(&mut s).unwrap();
        assert_eq!(r.line(), 2);
        r.read_to_string(&mut s).unwrap();
        assert_eq!(r.line(), 3);
    }

    #[test]
    fn refuses_reads_past_the_budget_until_marked() {
        let data = [b'x'; 64];
        let mut r = Limited::new(io::BufReader::with_capacity(8, &data[..]), 16);
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            assert_eq!(r.read(&mut buf).unwrap(), 8);
        }
        assert!(r.read(&mut buf).is_err());
        assert!(r.exceeded());
        r.mark();
        assert_eq!(r.read(&mut buf).unwrap(), 8);
    }
}
