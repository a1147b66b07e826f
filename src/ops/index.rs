//! Rules on index arrays that several op families share: one definition each, called by the
//! shape/value checks of every backend and front end (CPU, CUDA, `gshn op`, the C ABI).

use crate::error::{Error, Result};

/// Every index in `[0, rows)`, or an `Error::Invalid` naming the first bad one (Gather,
/// ScatterAdd).
pub fn validate_indices(op: &'static str, idx: &[i32], rows: usize) -> Result<()> {
    match idx.iter().position(|&i| i < 0 || i as usize >= rows) {
        Some(k) => Err(Error::invalid(
            op,
            format!("idx[{k}] = {} is out of range [0, {rows})", idx[k]),
        )),
        None => Ok(()),
    }
}

/// Stable counting sort of positions by key: `(ptr[groups + 1], positions)`, where group `g`
/// holds the positions `i` with `key(values[i]) = Some(g)` in increasing `i`, as
/// `positions[ptr[g]..ptr[g + 1]]`; `None` leaves a position out. Every key must be `< groups`.
///
/// This is the one builder of the deterministic gather orders: the CSC transpose of a graph
/// (positions = edges, key = source), the rows of a ScatterAdd and the pixels of a segment.
pub fn group_positions(
    values: &[i32],
    groups: usize,
    key: impl Fn(i32) -> Option<usize>,
) -> (Vec<i32>, Vec<i32>) {
    let mut ptr = vec![0i32; groups + 1];
    for &v in values {
        if let Some(k) = key(v) {
            ptr[k + 1] += 1;
        }
    }
    for g in 0..groups {
        ptr[g + 1] += ptr[g];
    }
    let mut fill = ptr.clone();
    let mut positions = vec![0i32; ptr[groups] as usize];
    for (i, &v) in values.iter().enumerate() {
        if let Some(k) = key(v) {
            positions[fill[k] as usize] = i as i32;
            fill[k] += 1;
        }
    }
    (ptr, positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_stable_and_skip_none() {
        let (ptr, pos) = group_positions(&[2, 0, -1, 2, 0], 3, |v| (v >= 0).then_some(v as usize));
        assert_eq!(ptr, vec![0, 2, 2, 4]);
        assert_eq!(pos, vec![1, 4, 0, 3]);
    }

    #[test]
    fn bad_index_is_named() {
        let e = validate_indices("gather", &[0, 3, 5], 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("idx[2] = 5"), "{e}");
        assert!(validate_indices("gather", &[0, 3], 4).is_ok());
    }
}
