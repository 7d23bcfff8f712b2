//! Where a matmul task writes: its own columns of every row of the shared output.
#![expect(
    unsafe_code,
    reason = "parallel tasks write disjoint column ranges of one row-major buffer, which safe \
              slices cannot express without a copy, and the buffer is not zeroed first"
)]

use std::marker::PhantomData;

use rayon::prelude::*;

/// Columns `j0..j0 + width` of every row of an `m × n` row-major output. [`fill_columns`] hands
/// out non-overlapping ranges, so tasks fill one output in parallel instead of filling tiles of
/// their own that are then copied into place.
///
/// Each row is written left to right, each column once: `next[r]` is the first column of row `r`
/// not yet written, and a write must start there. That is what every kernel does anyway, and it
/// lets [`fill_columns`] hand out memory that was never zeroed (zeroing it was 3 % of a decode
/// step over eight sequences) and still prove that every value it returns was written.
pub(crate) struct Columns<'a> {
    ptr: *mut f32,
    n: usize,
    j0: usize,
    width: usize,
    next: Vec<usize>,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Columns` is the only writer of its ranges (see `fill_columns`), as a `&mut` to them
// would be; sending it to another thread moves that exclusive access.
unsafe impl Send for Columns<'_> {}

impl Columns<'_> {
    /// The first column of the range.
    pub(crate) fn j0(&self) -> usize {
        self.j0
    }

    /// How many columns the range holds.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    /// Rows of the output.
    pub(crate) fn m(&self) -> usize {
        self.next.len()
    }

    /// Checks that `len` values go to row `r` from the range's column `at` on, the next ones
    /// that row is missing, and records them as written.
    fn claim(&mut self, r: usize, at: usize, len: usize) {
        let next = self.next.get_mut(r).expect("write below the output's last row");
        assert!(
            at == *next && at + len <= self.width,
            "a task writes its columns of a row once, left to right"
        );
        *next += len;
    }

    /// Writes `vals` into row `r` from the range's column `at` on.
    pub(crate) fn put(&mut self, r: usize, at: usize, vals: &[f32]) {
        self.claim(r, at, vals.len());
        // SAFETY: `r < m` and `j0 + at + len ≤ j0 + width ≤ n` (checked by `claim` and
        // `fill_columns`), so the write is inside the output; no other `Columns` covers these
        // columns.
        unsafe {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(r * self.n + self.j0 + at), vals.len());
        }
    }

    /// Writes the first `take` of a group's eight results into row `r` from column `at` on. A
    /// whole group (nearly every write) is one fixed-size move: through [`Columns::put`] the
    /// length is a run-time value and every group's eight floats cost a `memcpy` call.
    pub(crate) fn put_group(&mut self, r: usize, at: usize, vals: &[f32; 8], take: usize) {
        if take < vals.len() {
            return self.put(r, at, &vals[..take]);
        }
        self.claim(r, at, vals.len());
        // SAFETY: as in `put`, with the length fixed at eight.
        unsafe {
            self.ptr
                .add(r * self.n + self.j0 + at)
                .cast::<[f32; 8]>()
                .write_unaligned(*vals);
        }
    }

    /// Whether every column of every row has been written.
    fn is_full(&self) -> bool {
        self.next.iter().all(|&c| c == self.width)
    }
}

/// A new `m × n` output whose ranges of `width` columns (the last may be narrower) are filled by
/// `fill`, one parallel task each.
///
/// # Panics
/// If a task writes out of order or leaves a value unwritten (a kernel bug): the partly written
/// output is never read.
pub(crate) fn fill_columns(
    m: usize,
    n: usize,
    width: usize,
    fill: impl Fn(&mut Columns<'_>) + Sync,
) -> Vec<f32> {
    assert!(width > 0, "empty column range");
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let ptr = y.as_mut_ptr();
    let tasks: Vec<Columns<'_>> = (0..n.div_ceil(width))
        .map(|t| Columns {
            ptr,
            n,
            j0: t * width,
            width: width.min(n - t * width),
            next: vec![0; m],
            _y: PhantomData,
        })
        .collect();
    let incomplete = tasks
        .into_par_iter()
        .map(|mut cols| {
            fill(&mut cols);
            cols.is_full()
        })
        .filter(|full| !full)
        .count();
    assert!(incomplete == 0, "a matmul task left columns unwritten");
    // SAFETY: the capacity is `m · n`; the tasks' ranges cover columns `0..n` and each wrote all
    // of its columns of all `m` rows (`is_full`, with `claim` refusing any other write), so
    // every value is initialized; no task runs any more.
    unsafe { y.set_len(m * n) };
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_fill_every_column_of_every_row() {
        let (m, n) = (3, 21);
        let y = fill_columns(m, n, 8, |c| {
            for r in 0..c.m() {
                let vals: Vec<f32> = (0..c.width()).map(|j| (r * n + c.j0() + j) as f32).collect();
                c.put(r, 0, &vals);
            }
        });
        assert_eq!(y, (0..m * n).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    #[should_panic(expected = "unwritten")]
    fn a_task_that_skips_a_row_is_caught() {
        fill_columns(2, 16, 8, |c| c.put(0, 0, &[1.0; 8]));
    }

    #[test]
    #[should_panic(expected = "once, left to right")]
    fn a_task_that_writes_a_column_twice_is_caught() {
        fill_columns(1, 8, 8, |c| {
            c.put(0, 0, &[1.0; 4]);
            c.put(0, 0, &[1.0; 4]);
        });
    }
}
