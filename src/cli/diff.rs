//! `stageloop diff RUN_A RUN_B`: two eval runs compared problem by problem — the held-out
//! problems one solves (at least one correct sample of its k) and the other does not, with
//! both runs' correct / sampled counts; `--json` for programs.

use crate::analysis::evals::{self, ProblemDiff, Score};
use crate::runfs::RunDir;
use crate::runfs::records::Sample;
use crate::untrusted::display;
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::Path;

/// An eval run's sampled completions (its greedy ones left out), scored per problem. Lines that
/// do not parse are skipped, as everywhere else.
pub fn scores(run: &Path) -> anyhow::Result<BTreeMap<String, Score>> {
    let path = RunDir::new(run).samples();
    let text = crate::untrusted::read_small(&path, 4 << 30)
        .with_context(|| format!("{}: cannot read (is this an eval run?)", path.display()))?;
    // Parsed and judged as the notebook's samples browser does (one rule for "correct").
    let rows: Vec<Sample> = text
        .lines()
        .filter_map(Sample::parse)
        .filter(|s| !s.greedy)
        .collect();
    anyhow::ensure!(!rows.is_empty(), "{}: no scored samples", path.display());
    Ok(evals::problem_scores(
        rows.iter().map(|s| (s.prompt.as_str(), s.correct())),
    ))
}

pub fn run(a: &Path, b: &Path, json: bool) -> anyhow::Result<()> {
    let d = evals::problem_diff(&scores(a)?, &scores(b)?);
    if json {
        outln!("{}", serde_json::to_string(&d)?);
        return Ok(());
    }
    out!("{}", text(a, b, &d));
    Ok(())
}

fn text(a: &Path, b: &Path, d: &ProblemDiff) -> String {
    let name = |p: &Path| display(&RunDir::new(p).id()).into_owned();
    let (na, nb) = (name(a), name(b));
    let mut out = format!(
        "A {na}\nB {nb}\n{} common problems: both solve {}, neither {}, only A {}, only B {}\n",
        d.both + d.neither + d.only_a.len() + d.only_b.len(),
        d.both,
        d.neither,
        d.only_a.len(),
        d.only_b.len()
    );
    for (label, rows) in [("only A", &d.only_a), ("only B", &d.only_b)] {
        if rows.is_empty() {
            continue;
        }
        out += &format!("\n{label} solves (A correct/k, B correct/k):\n");
        for (p, sa, sb) in rows.iter() {
            out += &format!(
                "  {:<24} A {}/{}  B {}/{}\n",
                display(p),
                sa.0,
                sa.1,
                sb.0,
                sb.1
            );
        }
    }
    out
}
