//! Where cases come from: BraTS folders, lists of NIfTI files, manifests, synthetic phantoms.
//!
//! ```yaml
//! source:
//!   brats: {root: data/BraTS2018}                      # HGG/ and LGG/ folders
//! source:
//!   brats: {root: data/BraTS2019, grades: data/name_mapping.csv}   # flat, grades from a CSV
//! source:
//!   brats: {root: data/BraTS2023, naming: brats2023}   # <case>-t1n.nii.gz …, ET = 3
//! source:
//!   nifti_files: {files: ["ct/*.nii.gz"], label: "ct_labels/{name}_seg.nii.gz"}
//! source:
//!   manifest: {path: cases.csv}                        # id, <modality paths…>, label, grade
//! source:
//!   phantom: {cases: 20, seed: 7, shape: [96, 96, 96]}
//! ```
//!
//! File sources only list files; `nifti_decode` reads them, so decoding runs on its own
//! threads. A case with a missing file is still listed and fails alone, naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mtmed3d_pipeline::{
    BuildContext, Component, Field, Problem, Sample, Source, SourceConfig, StageContext, StageError,
};
use ndarray::{Array4, Axis};
use schemars::JsonSchema;
use serde::Deserialize;

use super::phantom::{GENERATOR_VERSION, MODALITIES, PhantomConfig, try_generate_case};

/// Identifies a file-backed case by each source file's path, size and modification time,
/// plus the attributes the source derived (grade, modalities), without reading the files:
/// keying thousands of cases must not mean hashing terabytes.
pub fn files_identity(sample: &Sample) -> Result<String, StageError> {
    let mut parts = Vec::new();
    for (role, path) in &sample.meta.sources {
        let meta = std::fs::metadata(path).map_err(|e| StageError::file(path, e.to_string()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
        parts.push(serde_json::json!({
            "role": role,
            "path": absolute,
            "bytes": meta.len(),
            "modified_ns": modified.to_string(),
        }));
    }
    Ok(mtmed3d_pipeline::cache_key::canonical_text(
        &serde_json::json!({
            "files": parts,
            "attrs": sample.meta.attrs,
        }),
    ))
}

/// Attribute keys a source sets for `nifti_decode`.
pub const ATTR_MODALITIES: &str = "modalities";
pub const ATTR_LABEL_ROLE: &str = "label_role";
pub const ATTR_GRADE: &str = "grade";

/// Finds `<stem>.nii.gz` or `<stem>.nii`.
fn nifti_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    ["nii.gz", "nii"]
        .iter()
        .map(|ext| dir.join(format!("{stem}.{ext}")))
        .find(|p| p.is_file())
}

fn file_case(
    id: &str,
    files: Vec<(String, PathBuf)>,
    label: Option<PathBuf>,
    grade: Option<String>,
) -> Sample {
    let mut s = Sample::new(id);
    let roles: Vec<String> = files.iter().map(|(r, _)| r.clone()).collect();
    for (role, path) in files {
        s.meta.sources.insert(role, path);
    }
    if let Some(label) = label {
        s.meta.sources.insert("label".into(), label);
        s.meta.attrs.insert(ATTR_LABEL_ROLE.into(), "label".into());
    }
    s.meta
        .attrs
        .insert(ATTR_MODALITIES.into(), serde_json::json!(roles));
    if let Some(grade) = grade {
        s.meta
            .attrs
            .insert(ATTR_GRADE.into(), serde_json::json!(grade));
        s.insert("grade", Field::Text(grade));
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BratsNaming {
    /// `<case>/<case>_t1.nii.gz`, modalities t1, t1ce, t2, flair, label seg (2018–2021).
    Brats2018,
    /// `<case>/<case>-t1n.nii.gz`, modalities t1n, t1c, t2w, t2f, label seg (2023+; ET = 3).
    Brats2023,
}

/// A BraTS dataset folder.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BratsSource {
    /// Dataset root: holds `HGG/` and `LGG/` folders of cases, or case folders directly.
    pub root: PathBuf,
    /// Modalities in channel order (default by naming: t1, t1ce, t2, flair or t1n, t1c, t2w, t2f).
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    /// Suffix of the label file; `null` for test sets without labels.
    #[serde(default = "default_seg")]
    pub label: Option<String>,
    /// File naming scheme.
    #[serde(default = "default_naming")]
    pub naming: BratsNaming,
    /// For flat layouts: a CSV with a case-id column and a `grade` column (HGG/LGG).
    #[serde(default)]
    pub grades: Option<PathBuf>,
}

fn default_seg() -> Option<String> {
    Some("seg".into())
}
fn default_naming() -> BratsNaming {
    BratsNaming::Brats2018
}

impl Component for BratsSource {
    const NAME: &'static str = "brats";
    const DOC: &'static str = "BraTS dataset: HGG/ and LGG/ folders (grade from the folder) or a flat folder with a grade CSV; 2018 or 2023 naming.";
    fn check(&self) -> Vec<Problem> {
        match &self.modalities {
            Some(m) if m.is_empty() => {
                vec![Problem::param("modalities", "list at least one modality")]
            }
            _ => vec![],
        }
    }
}

impl SourceConfig for BratsSource {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        if !self.root.is_dir() {
            return Err(StageError::file(
                &self.root,
                "no such folder (set `root` to the dataset folder that holds HGG/ and LGG/, or the case folders)",
            ));
        }
        let grades = match &self.grades {
            Some(path) => read_grades(path)?,
            None => BTreeMap::new(),
        };
        let mut cases = BTreeMap::new();
        let graded_folders = ["HGG", "LGG"]
            .iter()
            .filter(|g| self.root.join(g).is_dir())
            .count()
            > 0;
        let mut scan = |dir: &Path, grade: Option<&str>| -> Result<(), StageError> {
            let entries = std::fs::read_dir(dir).map_err(|e| StageError::file(dir, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| StageError::file(dir, e))?;
                if !entry.path().is_dir() {
                    continue;
                }
                let id = entry.file_name().to_string_lossy().into_owned();
                let grade = grade
                    .map(str::to_string)
                    .or_else(|| grades.get(&id).cloned());
                if let Some(previous) = cases.insert(id.clone(), (entry.path(), grade)) {
                    return Err(StageError::new(format!(
                        "case `{id}` appears twice: {} and {}",
                        previous.0.display(),
                        entry.path().display()
                    )));
                }
            }
            Ok(())
        };
        if graded_folders {
            for grade in ["HGG", "LGG"] {
                let dir = self.root.join(grade);
                if dir.is_dir() {
                    scan(&dir, Some(grade))?;
                }
            }
        } else {
            scan(&self.root, None)?;
        }
        Ok(Box::new(BratsCases {
            config: self.clone(),
            cases,
        }))
    }
}

/// Reads `case → grade` from a CSV whose header names a grade column and an id column.
fn read_grades(path: &Path) -> Result<BTreeMap<String, String>, StageError> {
    let text = std::fs::read_to_string(path).map_err(|e| StageError::file(path, e))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| StageError::file(path, "empty grade file"))?
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let grade_col = header
        .iter()
        .position(|h| h == "grade")
        .ok_or_else(|| StageError::file(path, "no `grade` column in the header"))?;
    // BraTS 2019's name_mapping.csv has several id columns, the newest last.
    let id_col = header
        .iter()
        .rposition(|h| h == "id" || h == "case" || h.contains("subject_id"))
        .ok_or_else(|| {
            StageError::file(path, "no case id column (`id`, `case` or `*subject_id`)")
        })?;
    let mut grades = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(id), Some(grade)) = (cells.get(id_col), cells.get(grade_col)) else {
            return Err(StageError::file(
                path,
                format!("line {} has too few columns", n + 2),
            ));
        };
        let grade = grade.to_ascii_uppercase();
        if grade != "HGG" && grade != "LGG" {
            return Err(StageError::file(
                path,
                format!("line {}: grade `{grade}` is not HGG or LGG", n + 2),
            ));
        }
        grades.insert(id.to_string(), grade);
    }
    Ok(grades)
}

struct BratsCases {
    config: BratsSource,
    cases: BTreeMap<String, (PathBuf, Option<String>)>,
}

impl BratsCases {
    fn modalities(&self) -> Vec<String> {
        self.config.modalities.clone().unwrap_or_else(|| {
            let names: &[&str] = match self.config.naming {
                BratsNaming::Brats2018 => &MODALITIES,
                BratsNaming::Brats2023 => &["t1n", "t1c", "t2w", "t2f"],
            };
            names.iter().map(|s| s.to_string()).collect()
        })
    }

    fn file(&self, dir: &Path, id: &str, role: &str) -> Result<PathBuf, StageError> {
        let sep = match self.config.naming {
            BratsNaming::Brats2018 => '_',
            BratsNaming::Brats2023 => '-',
        };
        let stem = format!("{id}{sep}{role}");
        nifti_file(dir, &stem).ok_or_else(|| {
            StageError::file(
                &dir.join(format!("{stem}.nii.gz")),
                format!("case `{id}` has no `{role}` file (looked for .nii.gz and .nii)"),
            )
        })
    }
}

impl Source for BratsCases {
    fn stratum(&self, case: &str) -> Result<Option<String>, StageError> {
        Ok(self.cases.get(case).and_then(|(_, grade)| grade.clone()))
    }

    fn identity(&self, case: &str) -> Result<Option<String>, StageError> {
        files_identity(&self.load(case, &StageContext::new("identity", 0, 0))?).map(Some)
    }

    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok(self.cases.keys().cloned().collect())
    }

    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        let (dir, grade) = self
            .cases
            .get(case)
            .ok_or_else(|| StageError::new(format!("unknown case `{case}`")))?;
        let files = self
            .modalities()
            .into_iter()
            .map(|role| self.file(dir, case, &role).map(|p| (role, p)))
            .collect::<Result<Vec<_>, _>>()?;
        let label = match &self.config.label {
            Some(role) => Some(self.file(dir, case, role)?),
            None => None,
        };
        Ok(file_case(case, files, label, grade.clone()))
    }
}

/// NIfTI files, one case each.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NiftiFilesSource {
    /// Paths or glob patterns (`*`, `?`, `[...]`), e.g. `["scans/*.nii.gz"]`.
    pub files: Vec<String>,
    /// Label path for each file: `{name}` is the file name without `.nii`/`.nii.gz`, `{dir}`
    /// its folder, e.g. `"{dir}/../labels/{name}_seg.nii.gz"`.
    #[serde(default)]
    pub label: Option<String>,
    /// Channel name of the image in metadata.
    #[serde(default = "default_image_role")]
    pub role: String,
}

fn default_image_role() -> String {
    "image".into()
}

impl Component for NiftiFilesSource {
    const NAME: &'static str = "nifti_files";
    const DOC: &'static str = "A list or glob of NIfTI files, each a case (id = file name), with an optional label path pattern.";
    fn check(&self) -> Vec<Problem> {
        if self.files.is_empty() {
            vec![Problem::param("files", "list at least one file or pattern")]
        } else {
            vec![]
        }
    }
}

/// The file name without `.nii.gz` / `.nii`.
pub fn nifti_stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".nii.gz", ".nii", ".hdr", ".hdr.gz"] {
        if let Some(stem) = name.strip_suffix(ext) {
            return stem.to_string();
        }
    }
    name
}

impl SourceConfig for NiftiFilesSource {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        let mut cases: BTreeMap<String, PathBuf> = BTreeMap::new();
        for pattern in &self.files {
            let matches: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
                glob::glob(pattern)
                    .map_err(|e| StageError::new(format!("pattern `{pattern}`: {e}")))?
                    .filter_map(Result::ok)
                    .collect()
            } else {
                // A plain path is kept even if missing: that case then fails alone, by name.
                vec![PathBuf::from(pattern)]
            };
            if matches.is_empty() {
                return Err(StageError::new(format!(
                    "pattern `{pattern}` matches no file"
                )));
            }
            for path in matches {
                let id = nifti_stem(&path);
                if let Some(previous) = cases.insert(id.clone(), path.clone()) {
                    return Err(StageError::new(format!(
                        "two files give case id `{id}`: {} and {}",
                        previous.display(),
                        path.display()
                    )));
                }
            }
        }
        Ok(Box::new(NiftiFiles {
            config: self.clone(),
            cases,
        }))
    }
}

struct NiftiFiles {
    config: NiftiFilesSource,
    cases: BTreeMap<String, PathBuf>,
}

impl Source for NiftiFiles {
    fn identity(&self, case: &str) -> Result<Option<String>, StageError> {
        files_identity(&self.load(case, &StageContext::new("identity", 0, 0))?).map(Some)
    }

    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok(self.cases.keys().cloned().collect())
    }

    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        let path = &self.cases[case];
        let label = self.config.label.as_ref().map(|pattern| {
            let dir = path.parent().unwrap_or(Path::new("."));
            PathBuf::from(
                pattern
                    .replace("{name}", case)
                    .replace("{dir}", &dir.to_string_lossy()),
            )
        });
        Ok(file_case(
            case,
            vec![(self.config.role.clone(), path.clone())],
            label,
            None,
        ))
    }
}

/// A CSV or JSON list of cases.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestSource {
    /// CSV: header `id,<modality>,…,label,grade` (label and grade optional; every other column
    /// is a modality path, in channel order). JSON: a list of
    /// `{"id": …, "modalities": {"t1": path, …}, "label": path, "grade": "HGG"}`.
    pub path: PathBuf,
    /// Channel order (JSON manifests; CSV uses column order when omitted).
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    /// Folder relative paths are taken from (default: the manifest's folder).
    #[serde(default)]
    pub base: Option<PathBuf>,
}

impl Component for ManifestSource {
    const NAME: &'static str = "manifest";
    const DOC: &'static str =
        "Cases listed in a CSV or JSON manifest: id, modality paths, label path, grade.";
}

#[derive(Debug, Clone, Deserialize)]
struct ManifestRow {
    id: String,
    modalities: BTreeMap<String, PathBuf>,
    #[serde(default)]
    label: Option<PathBuf>,
    #[serde(default)]
    grade: Option<String>,
}

impl SourceConfig for ManifestSource {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        let path = &self.path;
        let text = std::fs::read_to_string(path).map_err(|e| StageError::file(path, e))?;
        let base = self
            .base
            .clone()
            .unwrap_or_else(|| path.parent().map(Path::to_path_buf).unwrap_or_default());
        let is_json = path.extension().is_some_and(|e| e == "json");
        let (rows, column_order) = if is_json {
            let rows: Vec<ManifestRow> = serde_json::from_str(&text)
                .map_err(|e| StageError::file(path, format!("not a manifest list: {e}")))?;
            (rows, None)
        } else {
            parse_csv_manifest(path, &text)?
        };
        let order = self.modalities.clone().or(column_order);
        let mut cases = BTreeMap::new();
        for row in rows {
            let id = row.id.clone();
            if cases.insert(id.clone(), row).is_some() {
                return Err(StageError::file(
                    path,
                    format!("case `{id}` is listed twice"),
                ));
            }
        }
        Ok(Box::new(Manifest { cases, order, base }))
    }
}

fn parse_csv_manifest(
    path: &Path,
    text: &str,
) -> Result<(Vec<ManifestRow>, Option<Vec<String>>), StageError> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| StageError::file(path, "empty manifest"))?
        .split(',')
        .map(|h| h.trim().to_string())
        .collect();
    if !header.iter().any(|h| h == "id") {
        return Err(StageError::file(path, "the header has no `id` column"));
    }
    let roles: Vec<String> = header
        .iter()
        .filter(|h| !["id", "label", "grade"].contains(&h.as_str()))
        .cloned()
        .collect();
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != header.len() {
            return Err(StageError::file(
                path,
                format!(
                    "line {} has {} columns, the header {}",
                    n + 2,
                    cells.len(),
                    header.len()
                ),
            ));
        }
        let mut row = ManifestRow {
            id: String::new(),
            modalities: BTreeMap::new(),
            label: None,
            grade: None,
        };
        for (h, cell) in header.iter().zip(cells) {
            match h.as_str() {
                "id" => row.id = cell.to_string(),
                "label" if !cell.is_empty() => row.label = Some(cell.into()),
                "grade" if !cell.is_empty() => row.grade = Some(cell.to_ascii_uppercase()),
                "label" | "grade" => {}
                role => {
                    row.modalities.insert(role.to_string(), cell.into());
                }
            }
        }
        rows.push(row);
    }
    Ok((rows, Some(roles)))
}

struct Manifest {
    cases: BTreeMap<String, ManifestRow>,
    order: Option<Vec<String>>,
    base: PathBuf,
}

impl Source for Manifest {
    fn stratum(&self, case: &str) -> Result<Option<String>, StageError> {
        Ok(self.cases.get(case).and_then(|row| row.grade.clone()))
    }

    fn identity(&self, case: &str) -> Result<Option<String>, StageError> {
        files_identity(&self.load(case, &StageContext::new("identity", 0, 0))?).map(Some)
    }

    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok(self.cases.keys().cloned().collect())
    }

    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        let row = &self.cases[case];
        let resolve = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                self.base.join(p)
            }
        };
        let roles: Vec<String> = self
            .order
            .clone()
            .unwrap_or_else(|| row.modalities.keys().cloned().collect());
        let files = roles
            .iter()
            .map(|role| {
                row.modalities
                    .get(role)
                    .map(|p| (role.clone(), resolve(p)))
                    .ok_or_else(|| {
                        StageError::new(format!(
                            "case `{case}` has no `{role}` path in the manifest"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(file_case(
            case,
            files,
            row.label.as_ref().map(resolve),
            row.grade.clone(),
        ))
    }
}

/// Synthetic BraTS-like cases, made in memory (no files).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PhantomSource {
    /// Number of cases.
    pub cases: usize,
    /// Series seed: the same seed gives the same cases.
    #[serde(default)]
    pub seed: u64,
    /// Generator settings (shape, spacing, HGG fraction, tumour sizes, noise …).
    #[serde(default, flatten)]
    pub generator: PhantomConfig,
}

impl Component for PhantomSource {
    const NAME: &'static str = "phantom";
    const DOC: &'static str = "Synthetic BraTS-like cases in memory: image (t1, t1ce, t2, flair), label (0/1/2/4), grade, LPS affine.";
    fn writes(&self) -> Vec<String> {
        vec!["image".into(), "label".into(), "grade".into()]
    }
    fn check(&self) -> Vec<Problem> {
        match self.generator.validate() {
            Ok(()) => vec![],
            Err(e) => vec![Problem::param("shape", e.to_string())],
        }
    }
}

impl SourceConfig for PhantomSource {
    fn build(&self, _: &BuildContext) -> Result<Box<dyn Source>, StageError> {
        Ok(Box::new(self.clone()))
    }
}

/// Case ids of a phantom series.
pub fn phantom_id(index: usize) -> String {
    format!("Phantom_{index:04}")
}

impl Source for PhantomSource {
    fn identity(&self, case: &str) -> Result<Option<String>, StageError> {
        // Generation is a pure function of these, so they identify the case.
        Ok(Some(format!(
            "phantom v{GENERATOR_VERSION} seed {} case {case} {}",
            self.seed,
            serde_json::to_string(&self.generator).map_err(|e| StageError::new(e.to_string()))?
        )))
    }

    fn cases(&self) -> Result<Vec<String>, StageError> {
        Ok((0..self.cases).map(phantom_id).collect())
    }

    fn load(&self, case: &str, _: &StageContext) -> Result<Sample, StageError> {
        let index: usize = case
            .strip_prefix("Phantom_")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| StageError::new(format!("`{case}` is not a phantom case id")))?;
        let p = try_generate_case(&self.generator, self.seed, index)
            .map_err(|e| StageError::new(e.to_string()))?;
        let [x, y, z] = self.generator.shape;
        let mut image = Array4::<f32>::zeros((4, x, y, z));
        for (c, m) in p.modalities.iter().enumerate() {
            image.index_axis_mut(Axis(0), c).assign(m);
        }
        let mut s = Sample::new(case);
        s.insert("image", Field::f32(image.into_dyn()));
        s.insert("label", Field::u8(p.seg.into_dyn()));
        s.insert("grade", Field::Text(p.grade.as_str().to_string()));
        s.meta.affine = p.affine;
        s.meta.original_affine = p.affine;
        s.meta.original_shape = Some([x, y, z]);
        s.meta.spacing = p.spacing;
        s.meta
            .attrs
            .insert(ATTR_GRADE.into(), serde_json::json!(p.grade.as_str()));
        s.meta
            .attrs
            .insert(ATTR_MODALITIES.into(), serde_json::json!(MODALITIES));
        Ok(s)
    }
}
