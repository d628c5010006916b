//! Where a model file's tensors lie: the check that no two share bytes, for GGUF and
//! safetensors alike (an overlapping or retyped entry would read another tensor's data).

/// The first two of `spans` (start, end, name: byte ranges in one file) that overlap, in file
/// order; `None` when each tensor has its bytes to itself.
pub fn overlap(mut spans: Vec<(u64, u64, &str)>) -> Option<[(u64, u64, &str); 2]> {
    spans.sort_unstable();
    spans
        .windows(2)
        .find(|w| w[1].0 < w[0].1)
        .map(|w| [w[0], w[1]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ranges_that_share_bytes_overlap() {
        assert_eq!(
            overlap(vec![(10, 20, "b"), (0, 10, "a"), (20, 30, "c")]),
            None
        );
        assert_eq!(
            overlap(vec![(10, 20, "b"), (0, 11, "a")]),
            Some([(0, 11, "a"), (10, 20, "b")])
        );
    }
}
