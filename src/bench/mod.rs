//! `stageloop bench`: speed and memory measured on this machine, as figures to compare with a
//! reference measured in the same run (`benches/compare.py`), never as timed tests.
//! [`train`] measures the training core (training and sampling throughput of one model shape),
//! [`decode`] a pretrained model's sampling speed with quantised or f32 weights, [`kernels`]
//! each product kind against this CPU's peak for its number type, [`objectives`] the GRPO
//! objectives on given inputs (to set beside TRL's and verl's functions), [`draft`] sampling
//! with a multi-token-prediction depth's drafts against without,
//! [`notebook`] the TUI on a large synthetic workspace. This module sits above both: neither
//! the core nor the notebook imports it.

pub mod decode;
pub mod draft;
pub mod kernels;
pub mod notebook;
pub mod objectives;
pub mod train;

/// Peak resident set size of this process (Linux `VmHWM`), 0 where unknown.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// The median of a non-empty list (the mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
