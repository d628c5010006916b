//! stageloop: a terminal research notebook for DeepSeek-R1-style multi-stage training of small
//! language models. See `docs/ARCHITECTURE.md` for the map; dependencies point one way:
//! `cli → stages → (model, tasks, runfs)` and `cli → notebook → (runfs, analysis, spec)`.

pub mod analysis;
pub mod bench;
pub mod cli;
pub mod cpu;
pub mod handoff;
pub mod model;
pub mod notebook;
pub mod runfs;
pub mod spec;
pub mod stages;
pub mod tasks;
pub mod untrusted;
