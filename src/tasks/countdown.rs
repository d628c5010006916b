//! `countdown`: reach a target from 3–4 numbers with + − × ÷, each number used exactly once,
//! division only when exact, no negative intermediate results. `25,7,3>96:` → `(25+7)*3`.
//! Problems are built by combining the numbers, so a solution always exists. The trace lists
//! the steps (`25+7=32,32*3=96`). Partial credit: half credit scaled by closeness for a valid
//! expression that misses the target. A searching trace (`[task.corpus] search`) first writes
//! one to three attempts that miss, separated by `;` (`25*3=75,75+7=82;25+7=32,32*3=96`).
//!
//! Difficulty: 3 numbers 1–9; 3 numbers 1–20; 4 numbers 1–20; 4 numbers 1–50; 4 numbers 1–100.

use super::{Problem, Task, TaskRng};
use rand::Rng;
use rand::seq::SliceRandom;

pub struct Countdown;

const MAX_VALUE: i64 = 1000;

fn apply(a: i64, op: char, b: i64) -> Option<i64> {
    match op {
        '+' => Some(a + b),
        '-' if a >= b => Some(a - b),
        '*' if a * b <= MAX_VALUE => Some(a * b),
        '/' if b > 0 && a % b == 0 => Some(a / b),
        _ => None,
    }
}

/// Build the expression text and trace for `nums` combined left to right with `ops`.
fn build(nums: &[i64], ops: &[char]) -> Option<(String, String, i64)> {
    let mut acc = nums[0];
    let mut expr = nums[0].to_string();
    let mut prev: Option<char> = None;
    let mut steps = Vec::new();
    for (n, &op) in nums[1..].iter().zip(ops) {
        let r = apply(acc, op, *n)?;
        if matches!(op, '*' | '/') && matches!(prev, Some('+' | '-')) {
            expr = format!("({expr})");
        }
        expr = format!("{expr}{op}{n}");
        steps.push(format!("{acc}{op}{n}={r}"));
        acc = r;
        prev = Some(op);
    }
    Some((expr, steps.join(","), acc))
}

fn parse_prompt(prompt: &str) -> Option<(Vec<i64>, i64)> {
    let (nums, target) = prompt.strip_suffix(':')?.split_once('>')?;
    let nums = nums
        .split(',')
        .map(|t| t.parse().ok())
        .collect::<Option<Vec<i64>>>()?;
    Some((nums, target.parse().ok()?))
}

/// A tiny exact evaluator: integers, + - * /, parentheses. Returns the value and the numbers
/// used, or `None` for a syntax error, an inexact division or a negative intermediate.
pub fn eval(expr: &str) -> Option<(i64, Vec<i64>)> {
    struct P<'a> {
        s: &'a [u8],
        i: usize,
        used: Vec<i64>,
    }
    impl P<'_> {
        fn expr(&mut self) -> Option<i64> {
            let mut v = self.term()?;
            while let Some(&c) = self.s.get(self.i) {
                if c != b'+' && c != b'-' {
                    break;
                }
                self.i += 1;
                let r = self.term()?;
                v = if c == b'+' {
                    v + r
                } else {
                    (v >= r).then(|| v - r)?
                };
            }
            Some(v)
        }
        fn term(&mut self) -> Option<i64> {
            let mut v = self.atom()?;
            while let Some(&c) = self.s.get(self.i) {
                if c != b'*' && c != b'/' {
                    break;
                }
                self.i += 1;
                let r = self.atom()?;
                v = if c == b'*' {
                    v.checked_mul(r)?
                } else {
                    (r != 0 && v % r == 0).then(|| v / r)?
                };
            }
            Some(v)
        }
        fn atom(&mut self) -> Option<i64> {
            if self.s.get(self.i) == Some(&b'(') {
                self.i += 1;
                let v = self.expr()?;
                (self.s.get(self.i) == Some(&b')')).then_some(())?;
                self.i += 1;
                return Some(v);
            }
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            if start == self.i || self.i - start > 6 {
                return None;
            }
            let n: i64 = std::str::from_utf8(&self.s[start..self.i])
                .ok()?
                .parse()
                .ok()?;
            self.used.push(n);
            Some(n)
        }
    }
    let mut p = P {
        s: expr.trim().as_bytes(),
        i: 0,
        used: Vec::new(),
    };
    let v = p.expr()?;
    (p.i == p.s.len()).then_some((v, p.used))
}

pub(crate) fn uses_exactly(used: &[i64], nums: &[i64]) -> bool {
    let mut a = used.to_vec();
    let mut b = nums.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

impl Task for Countdown {
    fn name(&self) -> &'static str {
        "countdown"
    }
    fn alphabet(&self) -> &str {
        "0123456789+-*/()=,>:;"
    }
    fn generate(&self, rng: &mut TaskRng, difficulty: u32) -> Problem {
        let (n, max) = match difficulty {
            0 | 1 => (3, 9),
            2 => (3, 20),
            3 => (4, 20),
            4 => (4, 50),
            _ => (4, 100),
        };
        loop {
            let nums: Vec<i64> = (0..n).map(|_| rng.random_range(1..=max)).collect();
            let mut order = nums.clone();
            order.shuffle(rng);
            let ops: Vec<char> = (1..n)
                .map(|_| ['+', '-', '*', '/'][rng.random_range(0..4)])
                .collect();
            if let Some((expr, trace, target)) = build(&order, &ops) {
                if target <= 0 {
                    continue;
                }
                let shown: Vec<String> = nums.iter().map(i64::to_string).collect();
                return Problem {
                    prompt: format!("{}>{target}:", shown.join(",")),
                    answer: expr,
                    trace,
                };
            }
        }
    }
    fn accuracy(&self, prompt: &str, answer: &str) -> f64 {
        match (parse_prompt(prompt), eval(answer)) {
            (Some((nums, target)), Some((v, used)))
                if v == target && uses_exactly(&used, &nums) =>
            {
                1.0
            }
            _ => 0.0,
        }
    }
    fn partial(&self, prompt: &str, answer: &str) -> f64 {
        match (parse_prompt(prompt), eval(answer)) {
            (Some((nums, target)), Some((v, used))) if uses_exactly(&used, &nums) => {
                if v == target {
                    1.0
                } else {
                    0.5 * (1.0 - (v - target).abs() as f64 / target.max(1) as f64).max(0.0)
                }
            }
            _ => 0.0,
        }
    }
    fn wrong_answer(&self, p: &Problem, rng: &mut TaskRng) -> String {
        let (_, target) = parse_prompt(&p.prompt).unwrap_or_default();
        let ops: Vec<usize> = p
            .answer
            .char_indices()
            .filter(|(_, c)| "+-*/".contains(*c))
            .map(|(i, _)| i)
            .collect();
        for _ in 0..16 {
            let mut s: Vec<char> = p.answer.chars().collect();
            let i = ops[rng.random_range(0..ops.len())];
            s[i] = ['+', '-', '*'][rng.random_range(0..3)];
            let cand: String = s.into_iter().collect();
            if eval(&cand).is_none_or(|(v, _)| v != target) {
                return cand;
            }
        }
        // Fall back to a number that is certainly not an expression of the inputs.
        (target + 1).to_string()
    }
    fn slipped(&self, p: &Problem, rng: &mut TaskRng) -> (String, String) {
        let (_, target) = parse_prompt(&p.prompt).unwrap_or_default();
        // Re-derive the numbers in trace order from the steps, then change one operator.
        let steps: Vec<(i64, char, i64)> = p
            .trace
            .split(',')
            .filter_map(|s| {
                let (lhs, _) = s.split_once('=')?;
                let pos = lhs[1..].find(|c: char| "+-*/".contains(c))? + 1;
                Some((
                    lhs[..pos].parse().ok()?,
                    lhs.as_bytes()[pos] as char,
                    lhs[pos + 1..].parse().ok()?,
                ))
            })
            .collect();
        if let Some(&(first, _, _)) = steps.first() {
            let mut nums = vec![first];
            nums.extend(steps.iter().map(|s| s.2));
            let mut ops: Vec<char> = steps.iter().map(|s| s.1).collect();
            for _ in 0..16 {
                let i = rng.random_range(0..ops.len());
                let old = ops[i];
                ops[i] = ['+', '-', '*', '/'][rng.random_range(0..4)];
                if let Some((expr, trace, v)) = build(&nums, &ops)
                    && v != target
                {
                    return (trace, expr);
                }
                ops[i] = old;
            }
        }
        (p.trace.clone(), self.wrong_answer(p, rng))
    }
    fn search(&self, p: &Problem, rng: &mut TaskRng) -> Option<String> {
        let (nums, target) = parse_prompt(&p.prompt)?;
        let misses = rng.random_range(1..=3);
        let mut attempts: Vec<String> = Vec::new();
        for _ in 0..64 {
            if attempts.len() == misses {
                break;
            }
            let mut order = nums.clone();
            order.shuffle(rng);
            let ops: Vec<char> = (1..nums.len())
                .map(|_| ['+', '-', '*', '/'][rng.random_range(0..4)])
                .collect();
            if let Some((_, trace, v)) = build(&order, &ops)
                && v != target
                && !attempts.contains(&trace)
            {
                attempts.push(trace);
            }
        }
        attempts.push(p.trace.clone());
        Some(attempts.join(";"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluator_is_exact_and_tracks_numbers() {
        assert_eq!(eval("(25+7)*3"), Some((96, vec![25, 7, 3])));
        assert_eq!(eval("2+3*4"), Some((14, vec![2, 3, 4])));
        assert_eq!(eval("7/2"), None); // inexact division
        assert_eq!(eval("2-3"), None); // negative
        assert_eq!(eval("(2+3"), None);
        assert_eq!(eval("2+"), None);
        assert_eq!(eval(""), None);
    }

    #[test]
    fn verifier_requires_each_number_once_and_the_target() {
        let c = Countdown;
        assert_eq!(c.accuracy("25,7,3>96:", "(25+7)*3"), 1.0);
        assert_eq!(c.accuracy("25,7,3>96:", "(7+25)*3"), 1.0);
        assert_eq!(c.accuracy("25,7,3>96:", "96"), 0.0); // not built from the numbers
        assert_eq!(c.accuracy("25,7,3>96:", "(25+7)*3+0"), 0.0); // extra number
        assert_eq!(c.accuracy("25,7,3>96:", "25+7+3"), 0.0);
        assert!(c.partial("25,7,3>96:", "25+7*3") > 0.0);
        assert_eq!(c.partial("25,7,3>96:", "25*3"), 0.0);
    }

    #[test]
    fn a_search_trace_misses_before_it_hits() {
        use rand::SeedableRng;
        let c = Countdown;
        for seed in 0..200 {
            let mut rng = TaskRng::seed_from_u64(seed);
            let p = c.generate(&mut rng, 2);
            let (_, target) = parse_prompt(&p.prompt).unwrap();
            let t = c.search(&p, &mut rng).unwrap();
            let attempts: Vec<&str> = t.split(';').collect();
            assert!((2..=4).contains(&attempts.len()), "{t}");
            assert_eq!(*attempts.last().unwrap(), p.trace);
            // Every attempt's arithmetic is right; only the last one reaches the target.
            for (i, a) in attempts.iter().enumerate() {
                let mut last = 0;
                for step in a.split(',') {
                    let (lhs, rhs) = step.split_once('=').unwrap();
                    let (v, _) = eval(lhs).unwrap();
                    last = rhs.parse::<i64>().unwrap();
                    assert_eq!(v, last, "{t}");
                }
                assert_eq!(last == target, i + 1 == attempts.len(), "{p:?} {t}");
            }
        }
    }
}
