//! A pipeline file → a validated plan, collecting every mistake before reporting.
//!
//! ```yaml
//! name: demo
//! seed: 42
//! source:
//!   synthetic: {cases: 8}
//! stages:
//!   - scale: {field: image, factor: 2.0}
//!   - rand_noise: {field: image, std: 0.1, workers: 2}
//! sinks:
//!   - json_write: {path: out/stats.jsonl}
//! ```
//!
//! Validation runs in passes, like a compiler: the YAML syntax; the top-level keys; each
//! component (known name, known parameters, types, required parameters, value checks);
//! then the pipeline as a whole (every field a stage reads is written upstream, no two sinks
//! write one path, the pipeline is not empty).

use std::collections::BTreeSet;
use std::path::{Component as PathComponent, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Diagnostic, DiagnosticKind as K, Diagnostics};
use crate::registry::{ErasedConfig, Kind, Registry, nearest};
use crate::split::Split;
use crate::yaml::{self, DeErrorKind, Loc, Node, Value, from_node};

/// What happens when a sample fails in a stage.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Report the case and carry on with the others.
    #[default]
    Skip,
    /// Stop the run cleanly.
    Fail,
}

/// Options every component accepts next to its own parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommonOptions {
    /// Threads running this component.
    pub workers: usize,
    /// Capacity of the channel feeding this component.
    pub queue: usize,
    pub on_error: OnError,
}

impl Default for CommonOptions {
    fn default() -> Self {
        CommonOptions {
            workers: 1,
            queue: 2,
            on_error: OnError::Skip,
        }
    }
}

pub const COMMON_OPTIONS: [&str; 3] = ["workers", "queue", "on_error"];

const TOP_LEVEL: [&str; 14] = [
    "name",
    "description",
    "seed",
    "epochs",
    "shuffle",
    "split",
    "allow_failures",
    "max_in_flight",
    "max_in_flight_bytes",
    "defaults",
    "source",
    "stages",
    "sinks",
    "version",
];

/// One component of a validated pipeline.
pub struct Planned {
    pub name: String,
    pub kind: Kind,
    pub options: CommonOptions,
    pub config: Box<dyn ErasedConfig>,
    /// The component's own parameters as written (without the common options).
    pub params: Node,
    /// The parameters with every default filled in, so `{}` and `{axcodes: RAS}` are the
    /// same config (cache keys hash this).
    pub canonical: serde_json::Value,
    /// Where the component's name is written.
    pub loc: Loc,
}

impl Planned {
    /// The parameters as written, as JSON (for display).
    pub fn params_json(&self) -> serde_json::Value {
        self.params.to_json()
    }
}

/// Parameters as written, plus the schema's default of every parameter not written. Object
/// keys of `serde_json::Value` are sorted, so equal configs serialise to equal text.
fn canonical_params(
    written: &serde_json::Value,
    params: &[crate::registry::ParamDoc],
) -> serde_json::Value {
    let mut map = written.as_object().cloned().unwrap_or_default();
    for p in params {
        if let Some(default) = &p.default
            && !map.contains_key(&p.name)
        {
            map.insert(p.name.clone(), default.clone());
        }
    }
    serde_json::Value::Object(map)
}

/// A size in bytes as written in a pipeline: a number, or a number and a unit (`400 MiB`,
/// `1.5 GB`; B, kB/KB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB of 1024).
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of bytes or a size such as `400 MiB` or `2 GB`")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("`{n}` bytes is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_byte_size(text).map(ByteSize).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// `400 MiB` → 419430400. The error names what was written and what is accepted.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim();
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number"))?;
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "kB" | "KB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` has the unit `{unit}`; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ));
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A validated pipeline, ready to build and run.
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    pub seed: u64,
    pub epochs: u32,
    pub allow_failures: bool,
    /// Feed the cases in a new order each epoch, drawn from the seed.
    pub shuffle: bool,
    /// Run on one part of a cross-validation split of the source's cases.
    pub split: Option<Split>,
    /// At most this many cases between the source and the sinks at once (a memory budget);
    /// without it the queues alone bound them.
    pub max_in_flight: Option<u64>,
    /// At most about this many bytes of volumes between the source and the sinks: a case is
    /// started only while the cases in flight, each counted at its largest size so far (at
    /// least the mean size of the finished ones), leave room for one more of the mean size.
    pub max_in_flight_bytes: Option<u64>,
    pub source: Planned,
    pub stages: Vec<Planned>,
    pub sinks: Vec<Planned>,
    pub file: PathBuf,
}

impl Plan {
    /// Every component in pipeline order: source, stages, sinks.
    pub fn components(&self) -> impl Iterator<Item = &Planned> {
        std::iter::once(&self.source)
            .chain(self.stages.iter())
            .chain(self.sinks.iter())
    }
}

/// Reads and validates a pipeline file.
pub fn load(path: &Path, overrides: &[String], registry: &Registry) -> Result<Plan, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
        file: path.to_path_buf(),
        source: String::new(),
        items: vec![Diagnostic::new(
            K::Syntax,
            Loc::UNKNOWN,
            format!("cannot read the pipeline file: {e}"),
        )],
    })?;
    parse_str(&text, path, overrides, registry)
}

/// Validates pipeline text; `file` names it in messages.
pub fn parse_str(
    text: &str,
    file: &Path,
    overrides: &[String],
    registry: &Registry,
) -> Result<Plan, Diagnostics> {
    let fail = |items: Vec<Diagnostic>| Diagnostics {
        file: file.to_path_buf(),
        source: text.to_string(),
        items,
    };
    let mut root =
        yaml::parse(text).map_err(|e| fail(vec![Diagnostic::new(K::Syntax, e.loc, e.message)]))?;
    let mut errors = Vec::new();
    for o in overrides {
        if let Err(d) = apply_override(&mut root, o) {
            errors.push(d);
        }
    }
    let plan = Validator {
        registry,
        errors: &mut errors,
    }
    .plan(&root, file);
    match plan {
        Some(plan) if errors.is_empty() => Ok(plan),
        _ => {
            errors.sort_by_key(|d| (d.line, d.column));
            Err(fail(errors))
        }
    }
}

/// `stages.2.rand_flip.prob=0.3`, `stages.rand_flip.prob=0.3` (the first stage of that name),
/// `source.synthetic.cases=4`, `seed=7`.
pub fn apply_override(root: &mut Node, assignment: &str) -> Result<(), Diagnostic> {
    let bad = |msg: String| {
        Diagnostic::new(K::InvalidValue, Loc::UNKNOWN, msg)
            .with_help("write --set path.to.key=value, e.g. --set stages.rand_flip.prob=0.3")
    };
    let (path, raw) = assignment
        .split_once('=')
        .ok_or_else(|| bad(format!("`--set {assignment}` has no `=`")))?;
    let value = yaml::parse_override(raw).map_err(|e| {
        bad(format!(
            "`--set {assignment}`: the value is not valid YAML: {}",
            e.message
        ))
    })?;
    let keys: Vec<&str> = path.split('.').filter(|k| !k.is_empty()).collect();
    if keys.is_empty() {
        return Err(bad(format!("`--set {assignment}` names no key")));
    }
    if root.value == Value::Null {
        root.value = Value::Map(Vec::new());
    }
    let mut node = root;
    for (i, key) in keys.iter().enumerate() {
        let last = i + 1 == keys.len();
        node = match &mut node.value {
            Value::Seq(items) => {
                let index = match key.parse::<usize>() {
                    Ok(index) => index,
                    // A stage name instead of an index: the first entry with that name.
                    Err(_) => items
                        .iter()
                        .position(|item| item.get(key).is_some())
                        .ok_or_else(|| bad(format!("`--set {path}`: no entry named `{key}`")))?,
                };
                let item = items
                    .get_mut(index)
                    .ok_or_else(|| bad(format!("`--set {path}`: there is no entry {index}")))?;
                if key.parse::<usize>().is_err() {
                    // `stages.rand_flip.prob`: step through the entry into the stage's params.
                    let Value::Map(entries) = &mut item.value else {
                        unreachable!("position() matched a mapping")
                    };
                    let (_, params) = entries
                        .iter_mut()
                        .find(|(k, _)| k.as_str() == Some(key))
                        .expect("position() matched this key");
                    if params.value == Value::Null {
                        params.value = Value::Map(Vec::new());
                    }
                    if last {
                        *params = value;
                        return Ok(());
                    }
                    params
                } else if last {
                    *item = value;
                    return Ok(());
                } else {
                    item
                }
            }
            Value::Map(entries) => {
                let position = entries.iter().position(|(k, _)| k.as_str() == Some(key));
                let index = match position {
                    Some(index) => index,
                    None => {
                        entries.push((
                            Node::new(Loc::UNKNOWN, Value::Str(key.to_string())),
                            Node::new(Loc::UNKNOWN, Value::Map(Vec::new())),
                        ));
                        entries.len() - 1
                    }
                };
                let slot = &mut entries[index].1;
                if last {
                    *slot = value;
                    return Ok(());
                }
                if slot.value == Value::Null {
                    slot.value = Value::Map(Vec::new());
                }
                slot
            }
            _ => {
                return Err(bad(format!(
                    "`--set {path}`: `{key}` is inside a value that is neither a mapping nor a list"
                )));
            }
        };
    }
    Ok(())
}

struct Validator<'a> {
    registry: &'a Registry,
    errors: &'a mut Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, d: Diagnostic) {
        self.errors.push(d);
    }

    fn plan(&mut self, root: &Node, file: &Path) -> Option<Plan> {
        let Some(entries) = root.as_map() else {
            let message = if root.value == Value::Null {
                "the pipeline file is empty".to_string()
            } else {
                format!("a pipeline is a mapping, found {}", root.value.describe())
            };
            self.error(
                Diagnostic::new(K::EmptyPipeline, root.loc, message)
                    .with_help("start from `mtmed3d stages` and the examples in configs/"),
            );
            return None;
        };
        for (key, _) in entries {
            let name = key.as_str().unwrap_or("");
            if !TOP_LEVEL.contains(&name) {
                let mut d = Diagnostic::new(
                    K::UnknownField,
                    key.loc,
                    format!("unknown top-level key `{name}`"),
                );
                d = match nearest(name, TOP_LEVEL) {
                    Some(s) => d.with_help(format!("did you mean `{s}`?")),
                    None => {
                        d.with_help(format!("expected one of {}", yaml::quoted_list(&TOP_LEVEL)))
                    }
                };
                self.error(d);
            }
        }
        let name: String = self.scalar(root, "name").unwrap_or_else(|| file_stem(file));
        let description: Option<String> = self.scalar(root, "description");
        let seed: u64 = self.scalar(root, "seed").unwrap_or(0);
        let epochs: u32 = self.scalar(root, "epochs").unwrap_or(1);
        if epochs == 0
            && let Some((_, v)) = root.get("epochs")
        {
            self.error(Diagnostic::new(
                K::InvalidValue,
                v.loc,
                "`epochs` must be at least 1",
            ));
        }
        let allow_failures: bool = self.scalar(root, "allow_failures").unwrap_or(false);
        let shuffle: bool = self.scalar(root, "shuffle").unwrap_or(false);
        let max_in_flight: Option<u64> = self.scalar(root, "max_in_flight");
        if max_in_flight == Some(0)
            && let Some((_, v)) = root.get("max_in_flight")
        {
            self.error(
                Diagnostic::new(K::InvalidValue, v.loc, "`max_in_flight` must be at least 1")
                    .with_help("leave it out to let the queues alone bound the cases in flight"),
            );
        }
        let max_in_flight_bytes = self
            .scalar::<ByteSize>(root, "max_in_flight_bytes")
            .map(|b| b.0);
        if max_in_flight_bytes == Some(0)
            && let Some((_, v)) = root.get("max_in_flight_bytes")
        {
            self.error(
                Diagnostic::new(
                    K::InvalidValue,
                    v.loc,
                    "`max_in_flight_bytes` must be more than 0",
                )
                .with_help("leave it out to bound the cases in flight by their number alone"),
            );
        }
        let split: Option<Split> = self.scalar(root, "split");
        if let (Some(split), Some((_, node))) = (&split, root.get("split")) {
            for problem in split.problems() {
                self.error(
                    Diagnostic::new(K::InvalidValue, node.loc, problem)
                        .with_help("e.g. `split: {folds: 5, fold: 0, part: train}`"),
                );
            }
        }
        let defaults = match root.get("defaults") {
            Some((_, node)) => self.common_options(node, CommonOptions::default()).0,
            None => CommonOptions::default(),
        };

        let source = match root.get("source") {
            None => {
                self.error(
                    Diagnostic::new(K::MissingField, Loc::new(1, 1), "the pipeline has no `source`")
                        .with_help("add e.g. `source: {synthetic: {cases: 4}}`; `mtmed3d stages` lists the sources"),
                );
                None
            }
            Some((_, node)) => self.component(node, Kind::Source, defaults),
        };
        let stages = self.section(root, "stages", Kind::Stage, defaults);
        let sinks = self.section(root, "sinks", Kind::Sink, defaults);

        if stages.as_ref().is_some_and(|s| s.is_empty())
            && sinks.as_ref().is_some_and(|s| s.is_empty())
        {
            let loc = root
                .get("stages")
                .or_else(|| root.get("sinks"))
                .map(|(k, _)| k.loc)
                .unwrap_or(Loc::new(1, 1));
            self.error(
                Diagnostic::new(
                    K::EmptyPipeline,
                    loc,
                    "the pipeline has no stages and no sinks",
                )
                .with_help("add at least one entry under `stages:` or `sinks:`"),
            );
        }

        // Whole-pipeline checks run on whatever did parse, so a typo in one stage does not
        // hide a wiring mistake in another.
        let no_components: Vec<Option<Planned>> = Vec::new();
        self.check_fields(
            source.as_ref(),
            stages.as_ref().unwrap_or(&no_components),
            sinks.as_ref().unwrap_or(&no_components),
        );
        self.check_outputs(sinks.as_ref().unwrap_or(&no_components));
        self.check_cache(stages.as_ref().unwrap_or(&no_components));
        let source = source?;
        let stages = stages?.into_iter().collect::<Option<Vec<_>>>()?;
        let sinks = sinks?.into_iter().collect::<Option<Vec<_>>>()?;
        Some(Plan {
            name,
            description,
            seed,
            epochs,
            allow_failures,
            max_in_flight,
            max_in_flight_bytes,
            shuffle,
            split,
            source,
            stages,
            sinks,
            file: file.to_path_buf(),
        })
    }

    fn scalar<T: serde::de::DeserializeOwned>(&mut self, root: &Node, key: &str) -> Option<T> {
        let (_, node) = root.get(key)?;
        match from_node::<T>(node) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(Diagnostic::new(
                    K::WrongType,
                    e.loc.unwrap_or(node.loc),
                    format!("`{key}`: {}", e.message),
                ));
                None
            }
        }
    }

    /// A list of components (`None` for an entry that did not parse); `None` when the
    /// section itself is malformed.
    fn section(
        &mut self,
        root: &Node,
        key: &str,
        kind: Kind,
        defaults: CommonOptions,
    ) -> Option<Vec<Option<Planned>>> {
        let Some((_, node)) = root.get(key) else {
            return Some(Vec::new());
        };
        let items: &[Node] = match &node.value {
            Value::Null => &[],
            Value::Seq(items) => items,
            other => {
                self.error(
                    Diagnostic::new(
                        K::WrongType,
                        node.loc,
                        format!("`{key}` must be a list, found {}", other.describe()),
                    )
                    .with_help(format!(
                        "write each entry on its own line: `{key}:\\n  - name: {{...}}`"
                    )),
                );
                return None;
            }
        };
        Some(
            items
                .iter()
                .map(|item| self.component(item, kind, defaults))
                .collect(),
        )
    }

    /// One `name: {params}` entry. Reports every problem it finds in the entry.
    fn component(&mut self, node: &Node, kind: Kind, defaults: CommonOptions) -> Option<Planned> {
        let entries = match &node.value {
            Value::Map(entries) if entries.len() == 1 => entries,
            Value::Str(name) => {
                // `- nifti_decode` without parameters is a natural thing to write.
                return self.named_component(
                    node,
                    name,
                    &Node::new(node.loc, Value::Null),
                    kind,
                    defaults,
                );
            }
            Value::Map(entries) => {
                let keys: Vec<&str> = entries.iter().filter_map(|(k, _)| k.as_str()).collect();
                self.error(
                    Diagnostic::new(
                        K::WrongType,
                        node.loc,
                        format!(
                            "a {} entry names exactly one component, found {} keys ({})",
                            kind.section(),
                            keys.len(),
                            keys.join(", ")
                        ),
                    )
                    .with_help("indent the parameters under the component's name: `- rand_flip: {prob: 0.5, workers: 2}`"),
                );
                return None;
            }
            other => {
                self.error(Diagnostic::new(
                    K::WrongType,
                    node.loc,
                    format!(
                        "a {} entry is `name: {{parameters}}`, found {}",
                        kind.section(),
                        other.describe()
                    ),
                ));
                return None;
            }
        };
        let (key, params) = &entries[0];
        let Some(name) = key.as_str() else {
            self.error(Diagnostic::new(
                K::WrongType,
                key.loc,
                format!(
                    "a component name must be text, found {}",
                    key.value.describe()
                ),
            ));
            return None;
        };
        self.named_component(key, name, params, kind, defaults)
    }

    fn named_component(
        &mut self,
        key: &Node,
        name: &str,
        params: &Node,
        kind: Kind,
        defaults: CommonOptions,
    ) -> Option<Planned> {
        let Some(entry) = self.registry.get(name) else {
            let mut d = Diagnostic::new(
                K::UnknownStage,
                key.loc,
                format!("unknown {} `{name}`", kind_word(kind)),
            );
            d = match self.registry.suggest(name, kind) {
                Some(s) => d.with_help(format!(
                    "did you mean `{s}`? (`mtmed3d stages` lists them all)"
                )),
                None => d.with_help("`mtmed3d stages` lists the components"),
            };
            self.error(d);
            return None;
        };
        if entry.kind != kind {
            self.error(
                Diagnostic::new(
                    K::MisplacedStage,
                    key.loc,
                    format!(
                        "`{name}` is a {}, it cannot be used under `{}`",
                        kind_word(entry.kind),
                        kind.section()
                    ),
                )
                .with_help(format!("move it under `{}`", entry.kind.section())),
            );
            return None;
        }
        let own_params: Vec<(Node, Node)> = match &params.value {
            Value::Null => Vec::new(),
            Value::Map(entries) => entries.clone(),
            other => {
                self.error(
                    Diagnostic::new(
                        K::WrongType,
                        params.loc,
                        format!(
                            "the parameters of `{name}` must be a mapping, found {}",
                            other.describe()
                        ),
                    )
                    .with_help(format!("write `{name}: {{}}` for the defaults")),
                );
                return None;
            }
        };
        let before = self.errors.len();
        let (options, own_params) =
            self.common_options(&Node::new(params.loc, Value::Map(own_params)), defaults);
        let accepted = entry.param_names();
        let mut kept = Vec::new();
        for (k, v) in own_params {
            let pname = k.as_str().unwrap_or("");
            if accepted.iter().any(|a| a == pname) {
                kept.push((k, v));
                continue;
            }
            let all: Vec<&str> = accepted
                .iter()
                .map(String::as_str)
                .chain(COMMON_OPTIONS)
                .collect();
            let help = match nearest(pname, all.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("`{name}` accepts {}", yaml::quoted_list(&all)),
            };
            self.error(
                Diagnostic::new(
                    K::UnknownField,
                    k.loc,
                    format!("unknown parameter `{pname}` for `{name}`"),
                )
                .with_help(help),
            );
        }
        let own = Node::new(params.loc, Value::Map(kept));
        let config = match entry.parse(&own) {
            Ok(config) => Some(config),
            Err(e) => {
                let (kind, loc) = match e.kind {
                    DeErrorKind::UnknownField => (K::UnknownField, e.loc.unwrap_or(key.loc)),
                    // A missing parameter has no node of its own: point at the component.
                    DeErrorKind::MissingField => (K::MissingField, key.loc),
                    DeErrorKind::WrongType => (K::WrongType, e.loc.unwrap_or(key.loc)),
                    DeErrorKind::InvalidValue => (K::InvalidValue, e.loc.unwrap_or(key.loc)),
                };
                let mut d = Diagnostic::new(kind, loc, format!("`{name}`: {}", e.message));
                if let (Some(bad), false) = (&e.name, e.expected.is_empty())
                    && let Some(s) = nearest(bad, e.expected.iter().map(String::as_str))
                {
                    d = d.with_help(format!("did you mean `{s}`?"));
                }
                if e.kind == DeErrorKind::MissingField {
                    d = d.with_help(format!(
                        "add it: `{name}: {{{}: ...}}` (`mtmed3d stages` shows each parameter)",
                        e.name.as_deref().unwrap_or("?")
                    ));
                }
                self.error(d);
                None
            }
        }?;
        for problem in config.check() {
            let loc = problem
                .param
                .as_deref()
                .and_then(|p| own.get(p))
                .map(|(_, v)| v.loc)
                .unwrap_or(key.loc);
            self.error(Diagnostic::new(
                K::InvalidValue,
                loc,
                format!("`{name}`: {}", problem.message),
            ));
        }
        if self.errors.len() > before {
            return None;
        }
        let canonical = canonical_params(&own.to_json(), &entry.params());
        Some(Planned {
            name: name.to_string(),
            kind,
            options,
            config,
            params: own,
            canonical,
            loc: key.loc,
        })
    }

    /// Splits `workers`, `queue` and `on_error` from a component's parameters.
    fn common_options(
        &mut self,
        params: &Node,
        defaults: CommonOptions,
    ) -> (CommonOptions, Vec<(Node, Node)>) {
        let mut options = defaults;
        let mut rest = Vec::new();
        for (k, v) in params.as_map().unwrap_or(&[]) {
            let result = match k.as_str() {
                Some("workers") => from_node::<usize>(v).map(|n| options.workers = n),
                Some("queue") => from_node::<usize>(v).map(|n| options.queue = n),
                Some("on_error") => from_node::<OnError>(v).map(|p| options.on_error = p),
                _ => {
                    rest.push((k.clone(), v.clone()));
                    continue;
                }
            };
            let key = k.as_str().unwrap_or_default();
            match result {
                Err(e) => self.error(Diagnostic::new(
                    if e.kind == DeErrorKind::WrongType {
                        K::WrongType
                    } else {
                        K::InvalidValue
                    },
                    e.loc.unwrap_or(v.loc),
                    format!("`{key}`: {}", e.message),
                )),
                Ok(())
                    if (key == "workers" && options.workers == 0)
                        || (key == "queue" && options.queue == 0) =>
                {
                    self.error(Diagnostic::new(
                        K::InvalidValue,
                        v.loc,
                        format!("`{key}` must be at least 1"),
                    ));
                }
                Ok(()) => {}
            }
        }
        (options, rest)
    }

    /// Every field read must be written upstream. Checking stops at a component that did not
    /// parse: what it would have written is unknown.
    fn check_fields(
        &mut self,
        source: Option<&Planned>,
        stages: &[Option<Planned>],
        sinks: &[Option<Planned>],
    ) {
        let Some(source) = source else { return };
        let mut available: BTreeSet<String> = source.config.writes().into_iter().collect();
        for stage in stages {
            let Some(stage) = stage else { return };
            self.check_reads(stage, &available);
            for w in stage.config.writes() {
                available.insert(w);
            }
        }
        for sink in sinks.iter().flatten() {
            self.check_reads(sink, &available);
        }
    }

    fn check_reads(&mut self, component: &Planned, available: &BTreeSet<String>) {
        for field in component.config.reads() {
            if available.contains(&field) {
                continue;
            }
            let loc = component.params.find_str(&field).unwrap_or(component.loc);
            let listed = if available.is_empty() {
                "none".to_string()
            } else {
                available.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            let help = match nearest(&field, available.iter().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`? fields available here: {listed}"),
                None => format!(
                    "add a stage before `{}` that writes `{field}`; fields available here: {listed}",
                    component.name
                ),
            };
            self.error(
                Diagnostic::new(
                    K::UnsatisfiedField,
                    loc,
                    format!(
                        "`{}` reads field `{field}`, but nothing before it writes it",
                        component.name
                    ),
                )
                .with_help(help),
            );
        }
    }

    /// A cache stores what the stages before it compute, so at most one cache, and nothing
    /// random before it (its stored result would freeze one draw of the randomness).
    fn check_cache(&mut self, stages: &[Option<Planned>]) {
        let Some(cache_at) = stages
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.config.is_cache()))
        else {
            return;
        };
        let cache = stages[cache_at].as_ref().expect("found above");
        for stage in stages[..cache_at].iter().flatten() {
            if stage.config.random() {
                self.error(
                    Diagnostic::new(
                        K::MisplacedStage,
                        stage.loc,
                        format!(
                            "`{}` is random, so it cannot come before `{}` (line {}): a cache stores what the stages before it compute, which must be the same on every run",
                            stage.name, cache.name, cache.loc.line
                        ),
                    )
                    .with_help(format!("move `{}` after `{}`", stage.name, cache.name)),
                );
            }
        }
        for stage in stages[cache_at + 1..].iter().flatten() {
            if stage.config.is_cache() {
                self.error(
                    Diagnostic::new(
                        K::MisplacedStage,
                        stage.loc,
                        format!(
                            "a pipeline has at most one cache; `{}` at line {} is the first",
                            cache.name, cache.loc.line
                        ),
                    )
                    .with_help("remove one of them"),
                );
            }
        }
    }

    fn check_outputs(&mut self, sinks: &[Option<Planned>]) {
        let mut seen: Vec<(PathBuf, &Planned)> = Vec::new();
        for sink in sinks.iter().flatten() {
            for path in sink.config.outputs() {
                let normal = normalise(&path);
                if let Some((_, first)) = seen.iter().find(|(p, _)| outputs_clash(p, &normal)) {
                    // a pattern (`dir/*.json`) is found in the file by its folder
                    let written = path
                        .to_string_lossy()
                        .split("/*")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    self.error(
                        Diagnostic::new(
                            K::DuplicateOutput,
                            sink.params.find_str(&written).unwrap_or(sink.loc),
                            format!(
                                "`{}` writes `{}`, which `{}` at line {} already writes",
                                sink.name,
                                path.display(),
                                first.name,
                                first.loc.line
                            ),
                        )
                        .with_help("give each sink its own path"),
                    );
                } else {
                    seen.push((normal, sink));
                }
            }
        }
    }
}

/// Whether two sinks' outputs overlap: the same path, or a folder and something inside it.
/// Files named by a pattern in a shared folder (`pred/*.json`, `pred/*.nii.gz`) do not
/// overlap, so the prediction files `mtmed3d evaluate` reads can share one folder.
fn outputs_clash(a: &Path, b: &Path) -> bool {
    let is_pattern = |p: &Path| p.to_string_lossy().contains('*');
    a == b || (!is_pattern(a) && b.starts_with(a)) || (!is_pattern(b) && a.starts_with(b))
}

fn kind_word(kind: Kind) -> &'static str {
    match kind {
        Kind::Source => "source",
        Kind::Stage => "stage",
        Kind::Sink => "sink",
    }
}

fn file_stem(file: &Path) -> String {
    file.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pipeline".into())
}

/// Lexical normalisation (`out/./a/../b` → `out/b`), so two spellings of a path collide.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            PathComponent::CurDir => {}
            PathComponent::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}
