//! The masker's packed-batch decoding: pii-mask (compiled natively) on any
//! packed cells — bad lengths are refused with an error, never a panic, and
//! an accepted batch comes back with exactly as many cells.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pii_mask::exports::wardgate::plugin::masker::Guest;
use wardgate_sdk::testkit;
use wardgate_sdk::types::{CellFormat, Column, PackedCells, RowBatch};

fuzz_target!(|input: (u8, Vec<i32>, Vec<u8>)| {
    let (ncols, lengths, data) = input;
    let ncols = usize::from(ncols % 8) + 1;
    let columns: Vec<Column> = (0..ncols)
        .map(|i| Column {
            name: ["email", "card_number", "notes", "id"][i % 4].into(),
            type_oid: 25,
            table: Some("public.customers".into()),
            format: if i % 3 == 2 { CellFormat::BinaryText } else { CellFormat::Text },
        })
        .collect();
    testkit::set_config(&[]);
    let n = lengths.len();
    let batch = RowBatch { columns, cells: PackedCells { data, lengths } };
    if let Ok(m) = pii_mask::PiiMask::mask_rows(batch) {
        assert_eq!(m.cells.lengths.len(), n);
    }
});
