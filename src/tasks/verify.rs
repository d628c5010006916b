//! Answer verifiers for dataset tasks: each compares the text of a completion's single
//! `<answer>` block (the hack rules of [`super::rewards::parse`] already applied) with a row's
//! expected answer and returns 1.0 or 0.0.
//!
//! - `numeric`: the answer's number against the expected number. GSM8K answers (`… #### 1,234`)
//!   are read after their last `####`; `$`, thousands separators, `\boxed{…}`, decimals and
//!   fractions compare as numbers (0.5 = 1/2). An answer with several different numbers joined
//!   as a hedge or a list (`12 or 13`, `12, 13`, `between 3 and 4`) scores 0; otherwise its last
//!   number counts (`the total is 12`).
//! - `exact`: whitespace collapsed, a final period dropped, case ignored unless asked.
//! - `choice`: one letter A–E (`B`, `(B)`, `B)`, `B.`, `answer: B`); two different letters score 0.
//! - `regex`: the whole answer matches the pattern, and its first capture group (or the whole
//!   match without one) equals the expected value after `exact`'s normalisation.
//! - `countdown`: an expression over the row's numbers, each used once, that evaluates to its
//!   target (the built-in task's checker); the expected value is written `n1,n2,…>target`.

use regex::Regex;
use std::sync::LazyLock;

/// A verifier by name, with its settings.
#[derive(Debug, Clone)]
pub enum Verifier {
    Numeric,
    Exact { case_sensitive: bool },
    Choice,
    Regex(Regex),
    Countdown,
}

/// The verifier names, for messages.
pub const NAMES: &str = "numeric, exact, choice, regex, countdown";

impl Verifier {
    /// `name` with its options (`pattern` for regex, `case_sensitive` for exact).
    pub fn new(
        name: &str,
        pattern: Option<&str>,
        case_sensitive: bool,
    ) -> Result<Verifier, String> {
        Ok(match name {
            "numeric" => Verifier::Numeric,
            "exact" => Verifier::Exact { case_sensitive },
            "choice" => Verifier::Choice,
            "countdown" => Verifier::Countdown,
            "regex" => {
                let p = pattern.ok_or("verifier `regex` needs `pattern`")?;
                // Anchored: the whole answer must match.
                Verifier::Regex(
                    Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("pattern `{p}`: {e}"))?,
                )
            }
            other => return Err(format!("unknown verifier `{other}` (known: {NAMES})")),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verifier::Numeric => "numeric",
            Verifier::Exact { .. } => "exact",
            Verifier::Choice => "choice",
            Verifier::Regex(_) => "regex",
            Verifier::Countdown => "countdown",
        }
    }

    /// 1.0 when `given` (an answer block's text) is right for `expected`, else 0.0.
    pub fn score(&self, given: &str, expected: &str) -> f64 {
        let ok = match self {
            Verifier::Numeric => match (answer_number(given), expected_number(expected)) {
                (Some(a), Some(b)) => same_number(a, b),
                _ => false,
            },
            Verifier::Exact { case_sensitive } => {
                normalise(given, *case_sensitive) == normalise(expected, *case_sensitive)
            }
            Verifier::Choice => match (choice(given), choice(expected)) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
            Verifier::Regex(re) => re.captures(given.trim()).is_some_and(|c| {
                let got = c.get(1).or_else(|| c.get(0)).map_or("", |m| m.as_str());
                normalise(got, false) == normalise(expected, false)
            }),
            Verifier::Countdown => countdown(given, expected),
        };
        if ok { 1.0 } else { 0.0 }
    }
}

fn normalise(s: &str, case_sensitive: bool) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let s = s.strip_suffix('.').unwrap_or(&s).trim().to_string();
    if case_sensitive { s } else { s.to_lowercase() }
}

/// Numbers as written in answers: optional sign and `$`, thousands groups, decimals, a fraction.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(-|−)?\$?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:\s*/\s*(\d+))?").expect("valid")
});
/// Words and marks that join numbers into a hedge, a range or a list.
static HEDGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(or|and|between|to|either|maybe)\b|[,;~±]|\d\s*-\s*\d").expect("valid")
});

/// Every number in `s` with its byte range.
fn numbers(s: &str) -> Vec<(f64, std::ops::Range<usize>)> {
    NUMBER
        .captures_iter(s)
        .filter_map(|c| {
            let whole = c.get(0)?;
            let int: f64 = c.get(2)?.as_str().replace(',', "").parse().ok()?;
            let frac: f64 = c
                .get(3)
                .map_or(Some(0.0), |f| format!("0{}", f.as_str()).parse().ok())?;
            let mut v = int + frac;
            if let Some(d) = c.get(4) {
                let d: f64 = d.as_str().parse().ok()?;
                if d == 0.0 {
                    return None;
                }
                v /= d;
            }
            if c.get(1).is_some() {
                v = -v;
            }
            Some((v, whole.range()))
        })
        .collect()
}

/// The number an answer gives: `\boxed{…}` if present, else its last number — unless different
/// numbers are joined by a hedge or a list mark, which is no answer.
fn answer_number(given: &str) -> Option<f64> {
    let text = boxed(given).unwrap_or(given);
    let nums = numbers(text);
    let (last, _) = nums.last()?.clone();
    for w in nums.windows(2) {
        let between = &text[w[0].1.end..w[1].1.start];
        if !same_number(w[0].0, w[1].0) && HEDGE.is_match(between) {
            return None;
        }
    }
    Some(last)
}

/// The expected number of a row: after a GSM8K `####`, else the whole field.
fn expected_number(expected: &str) -> Option<f64> {
    let e = expected.rsplit_once("####").map_or(expected, |(_, a)| a);
    let e = boxed(e).unwrap_or(e);
    numbers(e).last().map(|(v, _)| *v)
}

/// The content of the last `\boxed{…}` (braces balanced).
fn boxed(s: &str) -> Option<&str> {
    let start = s.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1;
    for (i, c) in s[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

fn same_number(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

static CHOICE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:^|[^A-Za-z])([A-E])(?:[^A-Za-z]|$)").expect("valid"));

/// The one choice letter of a text; `None` for none or two different ones.
fn choice(s: &str) -> Option<char> {
    let s = s.trim();
    let s = s
        .strip_prefix("answer:")
        .or_else(|| s.strip_prefix("Answer:"))
        .unwrap_or(s);
    let mut found: Option<char> = None;
    // Letters standing alone (not inside a word); overlapping matches via a moving start.
    let mut at = 0;
    while let Some(c) = CHOICE.captures_at(s, at) {
        let m = c.get(1)?;
        let l = m.as_str().chars().next()?;
        if found.is_some_and(|f| f != l) {
            return None;
        }
        found = Some(l);
        at = m.end();
    }
    found
}

fn countdown(given: &str, expected: &str) -> bool {
    let Some((nums, target)) = expected.split_once('>') else {
        return false;
    };
    let nums: Option<Vec<i64>> = nums.split(',').map(|n| n.trim().parse().ok()).collect();
    let (Some(nums), Ok(target)) = (nums, target.trim().trim_end_matches(':').parse::<i64>())
    else {
        return false;
    };
    // `expr = target` is accepted as the expression.
    let expr = given.split('=').next().unwrap_or(given);
    super::countdown::eval(expr)
        .is_some_and(|(v, used)| v == target && super::countdown::uses_exactly(&used, &nums))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(given: &str, expected: &str) -> f64 {
        Verifier::Numeric.score(given, expected)
    }

    #[test]
    fn numeric_reads_gsm8k_money_separators_boxes_and_fractions() {
        assert_eq!(
            num("72", "Natalia sold 48/2 = 24 clips … 48+24 = 72.\n#### 72"),
            1.0
        );
        assert_eq!(num("$1,234", "#### 1234"), 1.0);
        assert_eq!(num("1234.00", "#### 1,234"), 1.0);
        assert_eq!(num("\\boxed{18}", "18"), 1.0);
        assert_eq!(
            num("The answer is \\boxed{\\frac{1}{2}}", "0.5"),
            0.0,
            "LaTeX fractions are not parsed"
        );
        assert_eq!(num("1/2", "0.5"), 1.0);
        assert_eq!(num("0.5", "#### 1/2"), 1.0);
        assert_eq!(
            num("She has 12 apples left", "12"),
            1.0,
            "the last number counts"
        );
        assert_eq!(num("-7", "-7"), 1.0);
        assert_eq!(num("7", "-7"), 0.0, "sign matters");
        assert_eq!(num("71", "#### 72"), 0.0, "a near miss is wrong");
        assert_eq!(num("72.5", "72"), 0.0);
        assert_eq!(num("1,2345", "12345"), 0.0, "not a thousands group");
    }

    #[test]
    fn numeric_hedges_lists_and_empty_answers_score_zero() {
        assert_eq!(num("12 or 13", "12"), 0.0);
        assert_eq!(num("13 or 12", "12"), 0.0);
        assert_eq!(num("12, 13", "13"), 0.0);
        assert_eq!(num("between 11 and 13", "12"), 0.0);
        assert_eq!(num("12-13", "13"), 0.0);
        assert_eq!(
            num("12 (that is, 12)", "12"),
            1.0,
            "the same number twice is no hedge"
        );
        assert_eq!(num("twelve", "12"), 0.0);
        assert_eq!(num("", "12"), 0.0);
        assert_eq!(num("12", "no number here"), 0.0);
        assert_eq!(num("5/0", "5"), 0.0);
    }

    #[test]
    fn exact_choice_regex_and_countdown() {
        let exact = Verifier::new("exact", None, false).unwrap();
        assert_eq!(exact.score("  Paris. ", "paris"), 1.0);
        assert_eq!(exact.score("New   York", "new york"), 1.0);
        assert_eq!(exact.score("Paris, France", "paris"), 0.0);
        let cased = Verifier::new("exact", None, true).unwrap();
        assert_eq!(cased.score("paris", "Paris"), 0.0);

        let c = Verifier::Choice;
        for ok in ["B", "(B)", "B)", "B.", "answer: B", "The answer is (B)"] {
            assert_eq!(c.score(ok, "B"), 1.0, "{ok}");
        }
        assert_eq!(c.score("A or B", "B"), 0.0, "two letters hedge");
        assert_eq!(c.score("(C)", "(B)"), 0.0);
        assert_eq!(
            c.score("Both", "B"),
            0.0,
            "a letter inside a word is not a choice"
        );

        let r = Verifier::new("regex", Some(r"x\s*=\s*(-?\d+)"), false).unwrap();
        assert_eq!(r.score("x = 4", "4"), 1.0);
        assert_eq!(r.score("x=5", "4"), 0.0);
        assert_eq!(r.score("so x = 4", "4"), 0.0, "the whole answer must match");
        assert!(Verifier::new("regex", Some("("), false).is_err());
        assert!(Verifier::new("regex", None, false).is_err());
        assert!(
            Verifier::new("fuzzy", None, false)
                .unwrap_err()
                .contains("numeric, exact")
        );

        let cd = Verifier::Countdown;
        assert_eq!(cd.score("(25+7)*3", "25,7,3>96"), 1.0);
        assert_eq!(cd.score("(25+7)*3 = 96", "25,7,3>96"), 1.0);
        assert_eq!(cd.score("25*3+21", "25,7,3>96"), 0.0, "a number not given");
        assert_eq!(cd.score("(25+7)*3*1", "25,7,3>96"), 0.0);
        assert_eq!(cd.score("25+7+3", "25,7,3>96"), 0.0, "wrong value");
        assert_eq!(cd.score("(25+7)*3", "garbage"), 0.0);
    }
}
