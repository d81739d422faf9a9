//! Packed row batches: one byte buffer plus one length per cell (-1 = NULL).
//!
//! [`PackedRows`] reads a batch cell by cell without copying; [`PackedBuilder`]
//! writes the answer. A masker usually does:
//!
//! ```
//! use wardgate_sdk::rows::{PackedRows, PackedBuilder};
//! # let cells = wardgate_sdk::testkit::pack(&[&[Some("a@b.io"), None]]);
//! let rows = PackedRows::new(&cells, 2).unwrap();
//! let mut out = PackedBuilder::with_capacity(cells.data.len(), cells.lengths.len());
//! for row in rows.iter() {
//!     for (col, cell) in row.enumerate() {
//!         match cell {
//!             None => out.push_null(),
//!             Some(bytes) => out.push(bytes), // or a masked copy
//!         }
//!         let _ = col;
//!     }
//! }
//! let masked = out.finish();
//! assert_eq!(masked.lengths.len(), 2);
//! ```

use crate::types::PackedCells;

/// Why a packed batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackedError {
    /// The number of cells is not a multiple of the number of columns.
    Ragged {
        /// Cells in the batch.
        cells: usize,
        /// Columns per row.
        columns: usize,
    },
    /// A length is below -1.
    BadLength {
        /// Index of the cell.
        cell: usize,
    },
    /// The lengths add up to more (or less) than the data buffer holds.
    Overrun {
        /// Bytes the lengths claim.
        claimed: usize,
        /// Bytes present.
        present: usize,
    },
}

impl std::fmt::Display for PackedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PackedError::Ragged { cells, columns } => {
                write!(f, "{cells} cells do not form rows of {columns} columns")
            }
            PackedError::BadLength { cell } => write!(f, "cell {cell} has a negative length other than -1"),
            PackedError::Overrun { claimed, present } => {
                write!(f, "cell lengths add up to {claimed} bytes but the buffer holds {present}")
            }
        }
    }
}

impl std::error::Error for PackedError {}

/// A validated, zero-copy view over packed cells.
#[derive(Debug, Clone, Copy)]
pub struct PackedRows<'a> {
    data: &'a [u8],
    lengths: &'a [i32],
    columns: usize,
}

impl<'a> PackedRows<'a> {
    /// Validate `cells` as rows of `columns` cells.
    pub fn new(cells: &'a PackedCells, columns: usize) -> Result<Self, PackedError> {
        Self::from_parts(&cells.data, &cells.lengths, columns)
    }

    /// Validate raw parts as rows of `columns` cells.
    pub fn from_parts(data: &'a [u8], lengths: &'a [i32], columns: usize) -> Result<Self, PackedError> {
        if columns == 0 {
            if lengths.is_empty() && data.is_empty() {
                return Ok(Self { data, lengths, columns: 0 });
            }
            return Err(PackedError::Ragged { cells: lengths.len(), columns });
        }
        if !lengths.len().is_multiple_of(columns) {
            return Err(PackedError::Ragged { cells: lengths.len(), columns });
        }
        let mut claimed: usize = 0;
        for (i, &len) in lengths.iter().enumerate() {
            if len < -1 {
                return Err(PackedError::BadLength { cell: i });
            }
            if len > 0 {
                claimed = claimed.saturating_add(len as usize);
            }
        }
        if claimed != data.len() {
            return Err(PackedError::Overrun { claimed, present: data.len() });
        }
        Ok(Self { data, lengths, columns })
    }

    /// Number of rows.
    pub fn row_count(&self) -> usize {
        self.lengths.len().checked_div(self.columns).unwrap_or(0)
    }

    /// Columns per row.
    pub fn column_count(&self) -> usize {
        self.columns
    }

    /// Iterate rows; each row iterates its cells (`None` = NULL).
    pub fn iter(&self) -> RowIter<'a> {
        RowIter { data: self.data, lengths: self.lengths, columns: self.columns, offset: 0, index: 0 }
    }

    /// Iterate all cells in row-major order.
    pub fn cells(&self) -> Cells<'a> {
        Cells { data: self.data, lengths: self.lengths, offset: 0, index: 0 }
    }
}

/// Iterator over rows of a [`PackedRows`].
pub struct RowIter<'a> {
    data: &'a [u8],
    lengths: &'a [i32],
    columns: usize,
    offset: usize,
    index: usize,
}

impl<'a> Iterator for RowIter<'a> {
    type Item = Cells<'a>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.columns == 0 || self.index >= self.lengths.len() {
            return None;
        }
        let lengths = &self.lengths[self.index..self.index + self.columns];
        let row = Cells { data: self.data, lengths, offset: self.offset, index: 0 };
        self.offset += lengths.iter().map(|&l| l.max(0) as usize).sum::<usize>();
        self.index += self.columns;
        Some(row)
    }
}

/// Iterator over cells (of one row or of a whole batch).
pub struct Cells<'a> {
    data: &'a [u8],
    lengths: &'a [i32],
    offset: usize,
    index: usize,
}

impl<'a> Iterator for Cells<'a> {
    type Item = Option<&'a [u8]>;
    fn next(&mut self) -> Option<Self::Item> {
        let len = *self.lengths.get(self.index)?;
        self.index += 1;
        if len < 0 {
            return Some(None);
        }
        let end = self.offset + len as usize;
        let cell = &self.data[self.offset..end];
        self.offset = end;
        Some(Some(cell))
    }
}

/// Builds packed cells.
#[derive(Debug, Default, Clone)]
pub struct PackedBuilder {
    data: Vec<u8>,
    lengths: Vec<i32>,
}

impl PackedBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `bytes` bytes and `cells` cells.
    pub fn with_capacity(bytes: usize, cells: usize) -> Self {
        Self { data: Vec::with_capacity(bytes), lengths: Vec::with_capacity(cells) }
    }

    /// Append a cell.
    pub fn push(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.lengths.push(bytes.len() as i32);
    }

    /// Append a NULL cell.
    pub fn push_null(&mut self) {
        self.lengths.push(-1);
    }

    /// Append a cell or NULL.
    pub fn push_opt(&mut self, cell: Option<&[u8]>) {
        match cell {
            Some(b) => self.push(b),
            None => self.push_null(),
        }
    }

    /// Cells pushed so far.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// Finish into the contract's [`PackedCells`].
    pub fn finish(self) -> PackedCells {
        PackedCells { data: self.data, lengths: self.lengths }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_nulls_and_empty_cells() {
        let mut b = PackedBuilder::new();
        b.push(b"alice");
        b.push_null();
        b.push(b"");
        b.push(b"bob");
        let cells = b.finish();
        let rows = PackedRows::new(&cells, 2).unwrap();
        assert_eq!(rows.row_count(), 2);
        let all: Vec<Vec<Option<&[u8]>>> = rows.iter().map(|r| r.collect()).collect();
        assert_eq!(all, vec![vec![Some(&b"alice"[..]), None], vec![Some(&b""[..]), Some(&b"bob"[..])]]);
    }

    #[test]
    fn lengths_that_overrun_the_buffer_are_rejected() {
        let cells = PackedCells { data: b"abc".to_vec(), lengths: vec![2, 5] };
        assert_eq!(PackedRows::new(&cells, 2).unwrap_err(), PackedError::Overrun { claimed: 7, present: 3 });
    }

    #[test]
    fn ragged_batches_and_bad_lengths_are_rejected() {
        let cells = PackedCells { data: vec![], lengths: vec![-1, -1, -1] };
        assert!(matches!(PackedRows::new(&cells, 2), Err(PackedError::Ragged { .. })));
        let cells = PackedCells { data: vec![], lengths: vec![-2] };
        assert_eq!(PackedRows::new(&cells, 1).unwrap_err(), PackedError::BadLength { cell: 0 });
    }
}
