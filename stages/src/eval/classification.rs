//! Grade classification counts with HGG as the positive class (as scikit-learn's
//! `confusion_matrix(labels=[LGG, HGG])`), pooled over all cases.

use std::fmt;

/// Tumour grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grade {
    Hgg,
    Lgg,
}

impl Grade {
    /// `HGG` or `LGG` (any case); `None` for anything else.
    pub fn parse(text: &str) -> Option<Grade> {
        match text.trim().to_ascii_uppercase().as_str() {
            "HGG" => Some(Grade::Hgg),
            "LGG" => Some(Grade::Lgg),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Grade::Hgg => "HGG",
            Grade::Lgg => "LGG",
        }
    }

    pub fn other(&self) -> Grade {
        match self {
            Grade::Hgg => Grade::Lgg,
            Grade::Lgg => Grade::Hgg,
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Confusion counts, HGG positive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl Confusion {
    pub fn from_pairs(pairs: impl IntoIterator<Item = (Grade, Grade)>) -> Confusion {
        let mut c = Confusion::default();
        for (truth, pred) in pairs {
            match (truth, pred) {
                (Grade::Hgg, Grade::Hgg) => c.tp += 1,
                (Grade::Lgg, Grade::Hgg) => c.fp += 1,
                (Grade::Lgg, Grade::Lgg) => c.tn += 1,
                (Grade::Hgg, Grade::Lgg) => c.fn_ += 1,
            }
        }
        c
    }

    fn ratio(a: usize, b: usize) -> Option<f64> {
        (b > 0).then(|| a as f64 / b as f64)
    }

    /// (TP + TN) / N.
    pub fn accuracy(&self) -> Option<f64> {
        Self::ratio(self.tp + self.tn, self.tp + self.tn + self.fp + self.fn_)
    }

    /// TP / (TP + FN), HGG recall; `None` without HGG cases (undefined, not 0).
    pub fn sensitivity(&self) -> Option<f64> {
        Self::ratio(self.tp, self.tp + self.fn_)
    }

    /// TN / (TN + FP), LGG recall; `None` without LGG cases.
    pub fn specificity(&self) -> Option<f64> {
        Self::ratio(self.tn, self.tn + self.fp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Grade::*;

    #[test]
    fn counts_and_rates() {
        let c = Confusion::from_pairs([(Hgg, Hgg), (Hgg, Lgg), (Hgg, Hgg), (Lgg, Lgg), (Lgg, Hgg)]);
        assert_eq!(
            c,
            Confusion {
                tp: 2,
                fp: 1,
                tn: 1,
                fn_: 1
            }
        );
        assert_eq!(c.accuracy(), Some(0.6));
        assert_eq!(c.sensitivity(), Some(2.0 / 3.0));
        assert_eq!(c.specificity(), Some(0.5));
        let only_hgg = Confusion::from_pairs([(Hgg, Hgg)]);
        assert_eq!(only_hgg.specificity(), None);
    }
}
