//! Cleaners: the per-source filtering and normalisation of the paper (section 2.1), one counted
//! [`Stage`] each, so that the manifest says what every step kept and dropped.

pub mod bloom;
pub mod books;
pub mod c4;
pub mod code;
pub mod code_quality;
pub mod english;
pub mod exact_dedup;
pub mod latex;
pub mod latex_macros;
pub mod license_header;
pub mod line_dedup;
pub mod minhash;
pub mod qa;
pub mod spdx;
mod spec;
pub mod web;
pub mod wikipedia;
pub mod wikitext;

use serde::{Deserialize, Serialize};

use crate::document::Document;
use crate::error::DataError;

/// One cleaning step. It may rewrite the document's text or drop it (`None`). Stages that
/// deduplicate keep state across documents, so a pipeline is run by one thread per source.
pub trait Stage: Send {
    /// Short, stable name used in the manifest (`c4-quality`, `line-dedup`, ...).
    fn name(&self) -> &'static str;
    fn apply(&mut self, doc: Document) -> Option<Document>;
}

/// What one stage kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub stage: String,
    pub docs_in: u64,
    pub docs_kept: u64,
    pub docs_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The stages of one source, applied in order, with their counts.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    reports: Vec<StageReport>,
}

impl Pipeline {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        let reports = stages
            .iter()
            .map(|s| StageReport {
                stage: s.name().to_string(),
                ..StageReport::default()
            })
            .collect();
        Self { stages, reports }
    }

    /// Runs `doc` through every stage; `None` when a stage dropped it. A document whose text
    /// becomes empty (only whitespace) is dropped by the stage that emptied it.
    pub fn run(&mut self, mut doc: Document) -> Option<Document> {
        for (stage, report) in self.stages.iter_mut().zip(&mut self.reports) {
            report.docs_in += 1;
            report.bytes_in += doc.text.len() as u64;
            match stage.apply(doc) {
                Some(d) if !d.text.trim().is_empty() => {
                    report.docs_kept += 1;
                    report.bytes_out += d.text.len() as u64;
                    doc = d;
                }
                _ => {
                    report.docs_dropped += 1;
                    return None;
                }
            }
        }
        Some(doc)
    }

    pub fn reports(&self) -> &[StageReport] {
        &self.reports
    }
}

/// The cleaner of a recipe source (`cleaner = { kind = "web", ... }`); each variant's settings
/// have defaults that follow the paper and the work it cites, and unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", from = "spec::TaggedSpec")]
pub enum CleanerSpec {
    /// No cleaning (already clean text).
    #[default]
    None,
    /// CommonCrawl and C4: line dedup, C4 quality rules, English filter.
    Web(web::WebSettings),
    /// Wikipedia wikitext to plain text.
    Wikipedia(wikipedia::WikipediaSettings),
    /// GitHub: permissive licences, quality heuristics, header stripping, exact dedup.
    Code(code::CodeSettings),
    /// Gutenberg/Books3: boilerplate, book-level near-duplicate removal.
    Books(books::BooksSettings),
    /// ArXiv LaTeX: preamble/bibliography, comments, macro expansion.
    Latex(latex::LatexSettings),
    /// StackExchange: HTML stripped, answers ordered by score.
    Qa(qa::QaSettings),
}

impl CleanerSpec {
    /// A fresh pipeline (fresh dedup state) for one run over one source.
    pub fn pipeline(&self) -> Result<Pipeline, DataError> {
        let stages = match self {
            Self::None => Vec::new(),
            Self::Web(s) => web::stages(s)?,
            Self::Wikipedia(s) => wikipedia::stages(s)?,
            Self::Code(s) => code::stages(s)?,
            Self::Books(s) => books::stages(s)?,
            Self::Latex(s) => latex::stages(s)?,
            Self::Qa(s) => qa::stages(s)?,
        };
        Ok(Pipeline::new(stages))
    }
}
