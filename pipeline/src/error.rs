//! Errors: per-sample stage errors, and located configuration diagnostics.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::yaml::Loc;

/// Why one sample failed in one stage. The runtime adds the case id and the stage name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    pub message: String,
}

impl StageError {
    pub fn new(message: impl Into<String>) -> Self {
        StageError {
            message: message.into(),
        }
    }

    /// An error about a file: the message starts with the path, so the user sees which one.
    pub fn file(path: &Path, reason: impl fmt::Display) -> Self {
        StageError::new(format!("{}: {reason}", path.display()))
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StageError {}

impl From<std::io::Error> for StageError {
    fn from(e: std::io::Error) -> Self {
        StageError::new(e.to_string())
    }
}

/// The kinds of mistakes `validate` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiagnosticKind {
    Syntax,
    UnknownStage,
    UnknownField,
    WrongType,
    MissingField,
    InvalidValue,
    /// A stage reads a field that nothing upstream writes.
    UnsatisfiedField,
    /// Two sinks write the same path.
    DuplicateOutput,
    EmptyPipeline,
    /// A stage placed where its kind does not belong (a sink under `stages:`).
    MisplacedStage,
}

impl DiagnosticKind {
    pub fn code(&self) -> &'static str {
        match self {
            DiagnosticKind::Syntax => "syntax",
            DiagnosticKind::UnknownStage => "unknown-stage",
            DiagnosticKind::UnknownField => "unknown-field",
            DiagnosticKind::WrongType => "wrong-type",
            DiagnosticKind::MissingField => "missing-field",
            DiagnosticKind::InvalidValue => "invalid-value",
            DiagnosticKind::UnsatisfiedField => "unsatisfied-field",
            DiagnosticKind::DuplicateOutput => "duplicate-output",
            DiagnosticKind::EmptyPipeline => "empty-pipeline",
            DiagnosticKind::MisplacedStage => "misplaced-stage",
        }
    }
}

/// One located mistake in a pipeline file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Diagnostic {
    pub kind: DiagnosticKind,
    pub line: u64,
    pub column: u64,
    pub message: String,
    /// How to fix it, when we can tell ("did you mean `nifti_decode`?").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(kind: DiagnosticKind, loc: Loc, message: impl Into<String>) -> Self {
        Diagnostic {
            kind,
            line: loc.line,
            column: loc.column,
            message: message.into(),
            help: None,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn loc(&self) -> Loc {
        Loc::new(self.line, self.column)
    }
}

/// Every mistake found in one pipeline file, rendered like a compiler's errors.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: PathBuf,
    pub source: String,
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn kinds(&self) -> Vec<DiagnosticKind> {
        self.items.iter().map(|d| d.kind).collect()
    }

    /// Machine-readable form for editors and CI.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "errors": self.items,
        })
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<&str> = self.source.lines().collect();
        for d in &self.items {
            writeln!(f, "error[{}]: {}", d.kind.code(), d.message)?;
            if d.line > 0 {
                writeln!(f, "  --> {}:{}:{}", self.file.display(), d.line, d.column)?;
                if let Some(text) = lines.get(d.line as usize - 1) {
                    let number = d.line.to_string();
                    let pad = " ".repeat(number.len());
                    writeln!(f, "{pad} |")?;
                    writeln!(f, "{number} | {text}")?;
                    let caret_at = (d.column.max(1) - 1) as usize;
                    let width = token_width(text, caret_at);
                    writeln!(
                        f,
                        "{pad} | {}{}",
                        " ".repeat(caret_at.min(text.chars().count())),
                        "^".repeat(width)
                    )?;
                }
            } else {
                writeln!(f, "  --> {}", self.file.display())?;
            }
            if let Some(help) = &d.help {
                writeln!(f, "  = help: {help}")?;
            }
            writeln!(f)?;
        }
        let n = self.items.len();
        write!(
            f,
            "{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            self.file.display()
        )
    }
}

/// Width of the token starting at `column` (for the caret line).
fn token_width(text: &str, column: usize) -> usize {
    let rest: String = text.chars().skip(column).collect();
    let width = rest
        .chars()
        .take_while(|c| !matches!(c, ':' | ',' | '}' | ']' | ' ' | '#'))
        .count();
    width.max(1)
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_snippet_and_help() {
        let d = Diagnostics {
            file: "p.yaml".into(),
            source: "stages:\n  - nifti_decod: {}\n".into(),
            items: vec![
                Diagnostic::new(
                    DiagnosticKind::UnknownStage,
                    Loc::new(2, 5),
                    "unknown stage `nifti_decod`",
                )
                .with_help("did you mean `nifti_decode`?"),
            ],
        };
        let text = d.to_string();
        assert_eq!(
            text,
            "error[unknown-stage]: unknown stage `nifti_decod`\n  --> p.yaml:2:5\n  |\n2 |   - nifti_decod: {}\n  |     ^^^^^^^^^^^\n  = help: did you mean `nifti_decode`?\n\n1 error in p.yaml"
        );
    }
}
