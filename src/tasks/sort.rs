//! `sort`: sort a list of small numbers, `5,3,9,1=` → `1,3,5,9`. The trace is empty (the think
//! block is where a model may learn its own scratch work); partial credit is the share of
//! positions that are right. Difficulty: 3–4 numbers below 10, 4–5 below 10, 5–6 below 21,
//! 6–8 below 51, 8–10 below 100.

use super::{Problem, Task, TaskRng};
use rand::Rng;

pub struct Sort;

fn parse_list(s: &str) -> Option<Vec<u32>> {
    s.split(',').map(|t| t.trim().parse().ok()).collect()
}

fn sorted_of(prompt: &str) -> Option<Vec<u32>> {
    let mut v = parse_list(prompt.strip_suffix('=')?)?;
    v.sort_unstable();
    Some(v)
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

impl Task for Sort {
    fn name(&self) -> &'static str {
        "sort"
    }
    fn alphabet(&self) -> &str {
        "0123456789,="
    }
    fn generate(&self, rng: &mut TaskRng, difficulty: u32) -> Problem {
        let (lo, hi, max) = match difficulty {
            0 | 1 => (3, 4, 9),
            2 => (4, 5, 9),
            3 => (5, 6, 20),
            4 => (6, 8, 50),
            _ => (8, 10, 99),
        };
        let n = rng.random_range(lo..=hi);
        let v: Vec<u32> = (0..n).map(|_| rng.random_range(0..=max)).collect();
        let mut s = v.clone();
        s.sort_unstable();
        Problem {
            prompt: format!("{}=", join(&v)),
            answer: join(&s),
            trace: String::new(),
        }
    }
    fn accuracy(&self, prompt: &str, answer: &str) -> f64 {
        match (sorted_of(prompt), parse_list(answer.trim())) {
            (Some(want), Some(got)) if want == got => 1.0,
            _ => 0.0,
        }
    }
    fn partial(&self, prompt: &str, answer: &str) -> f64 {
        let (Some(want), Some(got)) = (sorted_of(prompt), parse_list(answer.trim())) else {
            return 0.0;
        };
        let right = want.iter().zip(&got).filter(|(a, b)| a == b).count();
        right as f64 / want.len().max(got.len()) as f64
    }
    fn wrong_answer(&self, p: &Problem, rng: &mut TaskRng) -> String {
        let mut v = parse_list(&p.answer).unwrap_or_default();
        // Drop or change one element so the answer is certainly wrong.
        let i = rng.random_range(0..v.len());
        if rng.random() && v.len() > 1 {
            v.remove(i);
        } else {
            v[i] += 1;
        }
        join(&v)
    }
    fn slipped(&self, p: &Problem, rng: &mut TaskRng) -> (String, String) {
        (String::new(), self.wrong_answer(p, rng))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_partial_credit() {
        assert_eq!(Sort.accuracy("5,3,9,1=", "1,3,5,9"), 1.0);
        assert_eq!(Sort.accuracy("5,3,9,1=", "1,3,9,5"), 0.0);
        assert_eq!(Sort.partial("5,3,9,1=", "1,3,9,5"), 0.5);
        assert_eq!(Sort.partial("5,3,9,1=", "1,3"), 0.5);
        assert_eq!(Sort.partial("5,3,9,1=", "x"), 0.0);
    }
}
