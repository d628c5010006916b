//! Verifiable tasks, generated from a seed: each task makes problems (prompt, answer, worked
//! trace) and scores answers with a verifier, so RL needs no labels. [`TaskSet`] wraps a task
//! with the experiment's `[task]` settings: a held-out set disjoint from training prompts, a
//! deterministic training stream indexed by a cursor, and the corpus mix.

pub mod arith;
pub mod countdown;
pub mod dataset;
pub mod parity;
pub mod rewards;
pub mod sort;
pub mod verify;

use crate::spec::TaskSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

pub type TaskRng = ChaCha8Rng;

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// What the model sees, e.g. `37+5+82=`.
    pub prompt: String,
    /// The verified answer, e.g. `124`.
    pub answer: String,
    /// A worked trace for the think block.
    pub trace: String,
}

/// A task: a generator and its verifier.
pub trait Task: Send + Sync {
    fn name(&self) -> &'static str;
    /// Every character prompts, traces and answers may use.
    fn alphabet(&self) -> &str;
    /// A random problem at `difficulty` (1–5).
    fn generate(&self, rng: &mut TaskRng, difficulty: u32) -> Problem;
    /// 1.0 when `answer` is correct for `prompt`, else 0.0. Must not trust anything but the
    /// prompt: the answer is recomputed or checked from it.
    fn accuracy(&self, prompt: &str, answer: &str) -> f64;
    /// Partial credit in [0, 1]; by default the same as accuracy.
    fn partial(&self, prompt: &str, answer: &str) -> f64 {
        self.accuracy(prompt, answer)
    }
    /// A plausible wrong answer (for a deliberately imperfect corpus).
    fn wrong_answer(&self, p: &Problem, rng: &mut TaskRng) -> String;
    /// A trace with a slip in it, and the answer that follows from the slip.
    fn slipped(&self, p: &Problem, rng: &mut TaskRng) -> (String, String);
    /// A trace that searches: one or more failed attempts, then the problem's own trace. `None`
    /// for tasks that have a single way through (the corpus then writes the clean trace).
    fn search(&self, _p: &Problem, _rng: &mut TaskRng) -> Option<String> {
        None
    }
    /// The answer a think block's trace arrives at, for tasks whose traces end on it (arith's
    /// last running sum); `None` when the task cannot tell. Rising disagreement between a
    /// completion's answer and its own trace is a sign of reward hacking.
    fn trace_answer(&self, _think: &str) -> Option<String> {
        None
    }
    /// Held-out problems the task fixes itself (a dataset's split); `None` for generators,
    /// whose held-out set is drawn from the seed.
    fn fixed_heldout(&self) -> Option<Vec<Problem>> {
        None
    }
}

/// A task by name.
pub fn by_name(name: &str) -> Option<Box<dyn Task>> {
    match name {
        "arith" => Some(Box::new(arith::Arith)),
        "countdown" => Some(Box::new(countdown::Countdown)),
        "parity" => Some(Box::new(parity::Parity)),
        "sort" => Some(Box::new(sort::Sort)),
        _ => None,
    }
}

/// The named reward components of one completion.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rewards {
    pub accuracy: f64,
    pub format: f64,
    pub partial: f64,
}

impl Rewards {
    pub fn as_map(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("accuracy".into(), self.accuracy),
            ("format".into(), self.format),
            ("partial".into(), self.partial),
        ])
    }
}

/// A deterministic seed for item `index` of stream `salt`.
pub fn item_seed(seed: u64, salt: u64, index: u64) -> u64 {
    // splitmix64 over a mix of the three.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(index);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const SALT_HELDOUT: u64 = 1;
const SALT_TRAIN: u64 = 2;
const SALT_CORPUS_MIX: u64 = 3;

/// A task with the experiment's settings.
pub struct TaskSet {
    pub task: Box<dyn Task>,
    pub spec: TaskSpec,
    heldout: Vec<Problem>,
    heldout_prompts: HashSet<String>,
}

/// How one corpus example was made (for tests and data files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Clean,
    Bare,
    WrongAnswer,
    WrongTrace,
    Search,
}

impl TaskSet {
    pub fn new(spec: &TaskSpec) -> anyhow::Result<TaskSet> {
        let task: Box<dyn Task> = if spec.name == "dataset" {
            Box::new(dataset::Dataset::load(spec)?)
        } else {
            by_name(&spec.name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown task `{}` (known: arith, countdown, parity, sort, dataset)",
                    spec.name
                )
            })?
        };
        let max = crate::spec::validate::MAX_HELDOUT;
        anyhow::ensure!(
            (1..=max).contains(&spec.heldout),
            "heldout must be between 1 and {max} (got {})",
            spec.heldout
        );
        anyhow::ensure!(
            (1..=5).contains(&spec.difficulty),
            "difficulty must be between 1 and 5 (got {})",
            spec.difficulty
        );
        let mut heldout = Vec::with_capacity(spec.heldout);
        let mut seen = HashSet::new();
        let fixed = task.fixed_heldout();
        let generated = fixed.is_none();
        if let Some(fixed) = fixed {
            for p in fixed {
                if seen.insert(p.prompt.clone()) {
                    heldout.push(p);
                }
            }
        }
        let mut i = 0u64;
        while generated && heldout.len() < spec.heldout && i < spec.heldout as u64 * 20 {
            let mut rng = TaskRng::seed_from_u64(item_seed(spec.seed, SALT_HELDOUT, i));
            let p = task.generate(&mut rng, spec.difficulty);
            if seen.insert(p.prompt.clone()) {
                heldout.push(p);
            }
            i += 1;
        }
        Ok(TaskSet {
            task,
            spec: spec.clone(),
            heldout,
            heldout_prompts: seen,
        })
    }

    /// The held-out problems (distinct prompts, never produced by [`Self::train_problem`]).
    pub fn heldout(&self) -> &[Problem] {
        &self.heldout
    }

    /// Whether a prompt belongs to the held-out set.
    pub fn is_heldout(&self, prompt: &str) -> bool {
        self.heldout_prompts.contains(prompt)
    }

    /// Training problem number `index` of the stream (deterministic; skips held-out prompts).
    pub fn train_problem(&self, index: u64) -> Problem {
        let mut rng = TaskRng::seed_from_u64(item_seed(self.spec.seed, SALT_TRAIN, index));
        let mut p = self.task.generate(&mut rng, self.spec.difficulty);
        // Re-draw from the same stream until off the held-out set; bounded, since a task's
        // space is far larger than its held-out set at every difficulty.
        for _ in 0..1000 {
            if !self.is_heldout(&p.prompt) {
                break;
            }
            p = self.task.generate(&mut rng, self.spec.difficulty);
        }
        p
    }

    /// The clean R1 completion for a problem.
    pub fn completion(&self, p: &Problem) -> String {
        let trace = if self.spec.trace {
            p.trace.as_str()
        } else {
            ""
        };
        format!("<think>{trace}</think><answer>{}</answer>", p.answer)
    }

    /// Pretraining example `index`: prompt + completion, mixed as `[task.corpus]` says.
    pub fn corpus_example(&self, index: u64) -> (Problem, String, Variant) {
        let p = self.train_problem(index);
        let mut rng = TaskRng::seed_from_u64(item_seed(self.spec.seed, SALT_CORPUS_MIX, index));
        let u: f64 = rng.random();
        let m = &self.spec.corpus;
        let trace = if self.spec.trace {
            p.trace.clone()
        } else {
            String::new()
        };
        let (variant, completion) = if u < m.bare {
            (Variant::Bare, format!("<answer>{}</answer>", p.answer))
        } else if u < m.bare + m.wrong {
            let wrong = self.task.wrong_answer(&p, &mut rng);
            (
                Variant::WrongAnswer,
                format!("<think>{trace}</think><answer>{wrong}</answer>"),
            )
        } else if u < m.bare + m.wrong + m.wrong_trace && self.spec.trace {
            let (t, a) = self.task.slipped(&p, &mut rng);
            (
                Variant::WrongTrace,
                format!("<think>{t}</think><answer>{a}</answer>"),
            )
        } else if u < m.bare + m.wrong + m.wrong_trace + m.search
            && self.spec.trace
            && let Some(t) = self.task.search(&p, &mut rng)
        {
            (
                Variant::Search,
                format!("<think>{t}</think><answer>{}</answer>", p.answer),
            )
        } else {
            (Variant::Clean, self.completion(&p))
        };
        (p, completion, variant)
    }

    /// Whether a completion's answer is the one its own trace arrives at; `None` when it has
    /// no think block, no answer, or the task cannot read its traces.
    pub fn agrees_with_trace(&self, completion: &str) -> Option<bool> {
        let parsed = rewards::parse(completion);
        let implied = self.task.trace_answer(parsed.think.as_deref()?)?;
        Some(parsed.answer? == implied)
    }

    /// Score a completion against its prompt.
    pub fn rewards(&self, prompt: &str, completion: &str) -> Rewards {
        let parsed = rewards::parse(completion);
        let (accuracy, partial) = match &parsed.answer {
            Some(a) => (self.task.accuracy(prompt, a), self.task.partial(prompt, a)),
            None => (0.0, 0.0),
        };
        Rewards {
            accuracy,
            format: if parsed.format_ok { 1.0 } else { 0.0 },
            partial,
        }
    }
}

/// Digits of a non-negative number reversed (`124` → `421`), as traces write running sums.
pub fn reversed(n: impl ToString) -> String {
    n.to_string().chars().rev().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> TaskSpec {
        toml::from_str(&format!("name = \"{name}\"\nheldout = 200")).unwrap()
    }

    #[test]
    fn every_task_is_deterministic_disjoint_and_self_consistent() {
        for name in ["arith", "countdown", "parity", "sort"] {
            for difficulty in 1..=5 {
                let mut s = spec(name);
                s.difficulty = difficulty;
                let a = TaskSet::new(&s).unwrap();
                let b = TaskSet::new(&s).unwrap();
                assert_eq!(a.heldout(), b.heldout(), "{name}");
                assert_eq!(a.heldout().len(), 200, "{name} d{difficulty}");
                let tok = crate::model::tokenizer::Tokenizer::new(a.task.alphabet());
                for i in 0..300 {
                    let p = a.train_problem(i);
                    assert_eq!(p, b.train_problem(i));
                    assert!(!a.is_heldout(&p.prompt), "{name}: {}", p.prompt);
                    let c = a.completion(&p);
                    assert_eq!(
                        a.rewards(&p.prompt, &c).accuracy,
                        1.0,
                        "{name}: {} {c}",
                        p.prompt
                    );
                    assert_eq!(a.rewards(&p.prompt, &c).format, 1.0);
                    tok.encode(&p.prompt).unwrap();
                    tok.encode(&c).unwrap();
                    let (_, text, _) = a.corpus_example(i);
                    tok.encode(&text).unwrap();
                }
            }
        }
    }

    #[test]
    fn corpus_mix_follows_the_shares() {
        let a = TaskSet::new(&spec("arith")).unwrap();
        let n = 4000;
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let (p, text, v) = a.corpus_example(i);
            *counts.entry(format!("{v:?}")).or_insert(0) += 1;
            let r = a.rewards(&p.prompt, &text);
            match v {
                Variant::Clean | Variant::Search => assert_eq!(r.accuracy, 1.0),
                Variant::Bare => assert_eq!((r.accuracy, r.format), (1.0, 0.0)),
                Variant::WrongAnswer | Variant::WrongTrace => assert_eq!(r.accuracy, 0.0, "{text}"),
            }
        }
        let share = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / n as f64;
        assert!((share("Bare") - 0.15).abs() < 0.03, "{counts:?}");
        assert!((share("WrongAnswer") - 0.15).abs() < 0.03, "{counts:?}");
        assert!((share("WrongTrace") - 0.10).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn countdown_corpus_searches_at_its_share_and_lands_on_the_answer() {
        let mut s = spec("countdown");
        s.corpus.search = 0.3;
        let a = TaskSet::new(&s).unwrap();
        let n = 3000;
        let mut searched = 0;
        for i in 0..n {
            let (p, text, v) = a.corpus_example(i);
            if v == Variant::Search {
                searched += 1;
                assert!(text.contains(';'), "{text}");
                assert_eq!(a.rewards(&p.prompt, &text).accuracy, 1.0, "{text}");
            }
        }
        let share = searched as f64 / n as f64;
        assert!((share - 0.3).abs() < 0.03, "{share}");
    }
}
