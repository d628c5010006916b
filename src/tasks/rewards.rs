//! The R1 completion format and the rule-based rewards shared by all tasks.
//!
//! A well-formed completion is exactly `<think>…</think><answer>…</answer>`: each tag once, in
//! that order, no tag inside the blocks, nothing after `</answer>`. The answer is read only from
//! a single `<answer>` block outside `<think>`; several answer blocks, an empty answer or an
//! answer hidden in the think block earn no accuracy (known reward hacks).

/// A completion taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Text of the think block, when there is exactly one well-placed block.
    pub think: Option<String>,
    /// The answer, when there is exactly one `<answer>` block outside `<think>`, non-empty,
    /// and nothing but whitespace follows it.
    pub answer: Option<String>,
    /// The strict R1 format holds.
    pub format_ok: bool,
}

const TAGS: [&str; 4] = ["<think>", "</think>", "<answer>", "</answer>"];

fn count(s: &str, pat: &str) -> usize {
    s.matches(pat).count()
}

/// Parse a completion (the text after the prompt, EOS already removed).
pub fn parse(completion: &str) -> Parsed {
    let c = completion;
    let counts: Vec<usize> = TAGS.iter().map(|t| count(c, t)).collect();
    // Strict format: every tag exactly once, in order, starting the completion, nothing after.
    let format_ok =
        counts.iter().all(|&n| n == 1) && c.starts_with("<think>") && c.ends_with("</answer>") && {
            let (a, b, d, e) = (
                c.find("<think>").unwrap(),
                c.find("</think>").unwrap(),
                c.find("<answer>").unwrap(),
                c.find("</answer>").unwrap(),
            );
            a < b && b + "</think>".len() == d && d < e
        };
    let think = if counts[0] == 1 && counts[1] == 1 {
        let a = c.find("<think>").unwrap() + "<think>".len();
        c[a..].find("</think>").map(|b| c[a..a + b].to_string())
    } else {
        None
    };
    // The answer: exactly one answer block, not inside the think block, nothing after it.
    let answer = (|| {
        if counts[2] != 1 || counts[3] != 1 {
            return None;
        }
        let start = c.find("<answer>")?;
        let end = c.find("</answer>")?;
        if end < start {
            return None;
        }
        if let (Some(ts), Some(te)) = (c.find("<think>"), c.find("</think>"))
            && ts < start
            && start < te
        {
            return None; // hidden inside the think block
        }
        if counts[1] > 0 && c.rfind("</think>")? > start {
            return None;
        }
        if !c[end + "</answer>".len()..].trim().is_empty() {
            return None;
        }
        let a = c[start + "<answer>".len()..end].trim();
        (!a.is_empty()).then(|| a.to_string())
    })();
    Parsed {
        think,
        answer,
        format_ok,
    }
}

/// `1.0` when the strict format holds.
pub fn format_reward(completion: &str) -> f64 {
    if parse(completion).format_ok {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_completion() {
        let p = parse("<think>1,2</think><answer>12</answer>");
        assert!(p.format_ok);
        assert_eq!(p.answer.as_deref(), Some("12"));
        assert_eq!(p.think.as_deref(), Some("1,2"));
        // An empty think block is still the format.
        assert!(parse("<think></think><answer>3</answer>").format_ok);
    }

    #[test]
    fn hacks_earn_nothing() {
        // empty answer
        let p = parse("<think>x</think><answer></answer>");
        assert_eq!(p.answer, None);
        // several answer blocks
        let p = parse("<think>x</think><answer>1</answer><answer>2</answer>");
        assert_eq!(p.answer, None);
        assert!(!p.format_ok);
        // repeated closing tags
        let p = parse("<think>x</think></think><answer>1</answer></answer>");
        assert!(!p.format_ok);
        assert_eq!(p.answer, None);
        // text after </answer>
        let p = parse("<think>x</think><answer>1</answer>7");
        assert!(!p.format_ok);
        assert_eq!(p.answer, None);
        // answer only inside <think>
        let p = parse("<think><answer>1</answer></think>");
        assert_eq!(p.answer, None);
        assert!(!p.format_ok);
        // answer block before the think block closes
        let p = parse("<think>x<answer>1</answer></think>");
        assert_eq!(p.answer, None);
    }

    #[test]
    fn bare_answer_counts_for_accuracy_but_not_format() {
        let p = parse("<answer>42</answer>");
        assert_eq!(p.answer.as_deref(), Some("42"));
        assert!(!p.format_ok);
        assert_eq!(format_reward("<answer>42</answer>"), 0.0);
    }
}
