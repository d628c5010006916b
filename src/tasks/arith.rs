//! `arith`: chain sums such as `37+5+82=`. The trace lists the running sums with their digits
//! reversed (`24,421`), the order in which a left-to-right model can compute carries.
//!
//! Difficulty: 1 = two 1–2 digit terms; 2 = two–three 1–2 digit terms; 3 = two–three 1–3 digit
//! terms; 4 = three–four 1–3 digit terms; 5 = three–five 1–4 digit terms.

use super::{Problem, Task, TaskRng, reversed};
use rand::Rng;

pub struct Arith;

fn shape(difficulty: u32) -> (usize, usize, u32) {
    match difficulty {
        0 | 1 => (2, 2, 2),
        2 => (2, 3, 2),
        3 => (2, 3, 3),
        4 => (3, 4, 3),
        _ => (3, 5, 4),
    }
}

fn terms(prompt: &str) -> Option<Vec<u64>> {
    prompt
        .strip_suffix('=')?
        .split('+')
        .map(|t| t.parse::<u64>().ok())
        .collect()
}

fn trace_of(terms: &[u64]) -> String {
    let mut acc = terms[0];
    let mut parts = Vec::new();
    for t in &terms[1..] {
        acc += t;
        parts.push(reversed(acc));
    }
    parts.join(",")
}

impl Task for Arith {
    fn name(&self) -> &'static str {
        "arith"
    }
    fn alphabet(&self) -> &str {
        "0123456789+=,"
    }
    /// The last running sum, un-reversed: `5,21` → `12`.
    fn trace_answer(&self, think: &str) -> Option<String> {
        let last = think.rsplit(',').next()?.trim();
        (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit())).then(|| reversed(last))
    }
    fn generate(&self, rng: &mut TaskRng, difficulty: u32) -> Problem {
        let (lo, hi, max_digits) = shape(difficulty);
        let n = rng.random_range(lo..=hi);
        let nums: Vec<u64> = (0..n)
            .map(|_| {
                let d = rng.random_range(1..=max_digits);
                let low = if d == 1 { 0 } else { 10u64.pow(d - 1) };
                rng.random_range(low..10u64.pow(d))
            })
            .collect();
        let prompt = format!(
            "{}=",
            nums.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join("+")
        );
        Problem {
            prompt,
            answer: nums.iter().sum::<u64>().to_string(),
            trace: trace_of(&nums),
        }
    }
    fn accuracy(&self, prompt: &str, answer: &str) -> f64 {
        match terms(prompt) {
            Some(t) if answer.trim() == t.iter().sum::<u64>().to_string() => 1.0,
            _ => 0.0,
        }
    }
    fn wrong_answer(&self, p: &Problem, rng: &mut TaskRng) -> String {
        let right: i64 = p.answer.parse().unwrap_or(0);
        loop {
            let delta =
                [1, 2, 9, 10, 11, 100][rng.random_range(0..6)] * if rng.random() { 1 } else { -1 };
            let w = right + delta;
            if w >= 0 && w != right {
                return w.to_string();
            }
        }
    }
    /// A systematic slip: at one step the carry is dropped (digit-wise sum mod 10), the classic
    /// misconception, so an imperfect model has one consistent wrong mode rather than noise.
    /// Problems without a carry get an off-by-one slip instead.
    fn slipped(&self, p: &Problem, rng: &mut TaskRng) -> (String, String) {
        let t = terms(&p.prompt).unwrap_or_default();
        let mut acc = t[0];
        let carry_steps: Vec<usize> = t[1..]
            .iter()
            .enumerate()
            .filter_map(|(i, x)| {
                let before = acc;
                acc += x;
                (add_no_carry(before, *x) != before + x).then_some(i)
            })
            .collect();
        let at = if carry_steps.is_empty() {
            None
        } else {
            Some(carry_steps[rng.random_range(0..carry_steps.len())])
        };
        let mut acc = t[0];
        let mut parts = Vec::new();
        for (i, x) in t[1..].iter().enumerate() {
            acc = match at {
                Some(a) if a == i => add_no_carry(acc, *x),
                None if i + 1 == t.len() - 1 => acc + x + 1,
                _ => acc + x,
            };
            parts.push(reversed(acc));
        }
        (parts.join(","), acc.to_string())
    }
}

/// `a + b` with every carry dropped: each digit is `(a_i + b_i) mod 10`.
pub fn add_no_carry(mut a: u64, mut b: u64) -> u64 {
    let (mut out, mut place) = (0, 1);
    while a > 0 || b > 0 {
        out += ((a % 10 + b % 10) % 10) * place;
        a /= 10;
        b /= 10;
        place *= 10;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_implies_its_last_running_sum() {
        let a = Arith;
        let p = Problem {
            prompt: "37+5+82=".into(),
            answer: "124".into(),
            trace: trace_of(&[37, 5, 82]),
        };
        assert_eq!(a.trace_answer(&p.trace).as_deref(), Some("124"));
        assert_eq!(a.trace_answer("24,"), None);
        assert_eq!(a.trace_answer("x"), None);
    }

    #[test]
    fn verifier_recomputes_from_the_prompt() {
        let a = Arith;
        assert_eq!(a.accuracy("37+5+82=", "124"), 1.0);
        assert_eq!(a.accuracy("37+5+82=", " 124 "), 1.0);
        assert_eq!(a.accuracy("37+5+82=", "0124"), 0.0);
        assert_eq!(a.accuracy("37+5+82=", "125"), 0.0);
        assert_eq!(a.accuracy("37+5+82=", ""), 0.0);
        assert_eq!(a.accuracy("garbage", "1"), 0.0);
        assert_eq!(trace_of(&[37, 5, 82]), "24,421");
    }

    #[test]
    fn slips_drop_a_carry() {
        assert_eq!(add_no_carry(37, 5), 32);
        assert_eq!(add_no_carry(99, 1), 90);
        assert_eq!(add_no_carry(12, 34), 46);
        let p = Arith.generate(&mut rand::SeedableRng::seed_from_u64(0), 2);
        let (trace, answer) = Arith.slipped(&p, &mut rand::SeedableRng::seed_from_u64(1));
        assert_ne!(answer, p.answer, "{p:?} {trace}");
    }
}
