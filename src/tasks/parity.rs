//! `parity`: the parity of a bit string, `1011=` → `1`. The trace is the running XOR.
//! Difficulty scales the length: 6–10, 8–14, 12–20, 16–28, 24–40 bits.

use super::{Problem, Task, TaskRng};
use rand::Rng;

pub struct Parity;

fn running(bits: &str) -> String {
    let mut acc = 0u8;
    bits.bytes()
        .map(|b| {
            acc ^= b - b'0';
            (b'0' + acc) as char
        })
        .collect()
}

impl Task for Parity {
    fn name(&self) -> &'static str {
        "parity"
    }
    fn alphabet(&self) -> &str {
        "01="
    }
    fn generate(&self, rng: &mut TaskRng, difficulty: u32) -> Problem {
        let (lo, hi) = match difficulty {
            0 | 1 => (6, 10),
            2 => (8, 14),
            3 => (12, 20),
            4 => (16, 28),
            _ => (24, 40),
        };
        let n = rng.random_range(lo..=hi);
        let bits: String = (0..n)
            .map(|_| if rng.random() { '1' } else { '0' })
            .collect();
        let trace = running(&bits);
        Problem {
            prompt: format!("{bits}="),
            answer: trace[trace.len() - 1..].to_string(),
            trace,
        }
    }
    fn accuracy(&self, prompt: &str, answer: &str) -> f64 {
        let Some(bits) = prompt.strip_suffix('=') else {
            return 0.0;
        };
        if bits.is_empty() || !bits.bytes().all(|b| b == b'0' || b == b'1') {
            return 0.0;
        }
        let ones = bits.bytes().filter(|&b| b == b'1').count();
        if answer.trim() == (ones % 2).to_string() {
            1.0
        } else {
            0.0
        }
    }
    fn wrong_answer(&self, p: &Problem, _: &mut TaskRng) -> String {
        if p.answer == "1" { "0" } else { "1" }.to_string()
    }
    fn slipped(&self, p: &Problem, rng: &mut TaskRng) -> (String, String) {
        let bits = p.prompt.trim_end_matches('=');
        let at = rng.random_range(0..bits.len());
        let mut acc = 0u8;
        let trace: String = bits
            .bytes()
            .enumerate()
            .map(|(i, b)| {
                acc ^= b - b'0';
                if i == at {
                    acc ^= 1;
                }
                (b'0' + acc) as char
            })
            .collect();
        let answer = trace[trace.len() - 1..].to_string();
        (trace, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parity_and_running_xor() {
        assert_eq!(running("1011"), "1101");
        assert_eq!(Parity.accuracy("1011=", "1"), 1.0);
        assert_eq!(Parity.accuracy("1011=", "0"), 0.0);
        assert_eq!(Parity.accuracy("10a1=", "1"), 0.0);
        assert_eq!(Parity.accuracy("=", "0"), 0.0);
    }
}
