//! Where a matmul task writes: its own columns of every row of the shared output.
#![expect(
    unsafe_code,
    reason = "parallel tasks write disjoint column ranges of one row-major buffer, which safe \
              slices cannot express without a copy"
)]

use std::marker::PhantomData;

/// Columns `j0..j0 + width` of every row of `y` (`m × n`, row-major). [`split_columns`] hands
/// out non-overlapping ranges, so tasks fill one output in parallel instead of filling tiles of
/// their own that are then copied into place.
pub(crate) struct Columns<'a> {
    ptr: *mut f32,
    n: usize,
    m: usize,
    j0: usize,
    width: usize,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: a `Columns` is the only writer of its ranges (see `split_columns`), as a `&mut` to them
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
        self.m
    }

    /// Writes `vals` into row `r` from the range's column `at` on.
    pub(crate) fn put(&mut self, r: usize, at: usize, vals: &[f32]) {
        assert!(
            r < self.m && at + vals.len() <= self.width,
            "write outside a task's columns"
        );
        // SAFETY: `r < m` and `j0 + at + len ≤ j0 + width ≤ n` (checked above and in
        // `split_columns`), so the write is inside `y`; no other `Columns` covers these columns.
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
        assert!(
            r < self.m && at + vals.len() <= self.width,
            "write outside a task's columns"
        );
        // SAFETY: as in `put`, with the length fixed at eight.
        unsafe {
            self.ptr
                .add(r * self.n + self.j0 + at)
                .cast::<[f32; 8]>()
                .write_unaligned(*vals);
        }
    }
}

/// Splits `y` (`m × n`) into ranges of `width` columns (the last may be narrower).
pub(crate) fn split_columns(y: &mut [f32], m: usize, n: usize, width: usize) -> Vec<Columns<'_>> {
    assert!(y.len() == m * n && width > 0, "output is not m × n");
    let ptr = y.as_mut_ptr();
    (0..n.div_ceil(width))
        .map(|t| Columns {
            ptr,
            n,
            m,
            j0: t * width,
            width: width.min(n - t * width),
            _y: PhantomData,
        })
        .collect()
}
