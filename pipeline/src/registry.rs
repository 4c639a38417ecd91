//! The table of components a pipeline may name, with their documentation and schemas.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::Schema;
use serde::Serialize;

use crate::error::StageError;
use crate::stage::{
    BuildContext, Component, Problem, Sink, SinkConfig, Source, SourceConfig, Stage, StageConfig,
};
use crate::yaml::{DeError, Node, from_node};

/// Where a component may appear in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Source,
    Stage,
    Sink,
}

impl Kind {
    pub fn section(&self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Stage => "stages",
            Kind::Sink => "sinks",
        }
    }
}

/// A running component, built from its config.
pub enum Built {
    Source(Box<dyn Source>),
    Stage(Box<dyn Stage>),
    Sink(Box<dyn Sink>),
}

/// A parsed config with its type erased, so the engine can hold any stage's config.
pub trait ErasedConfig: Send + Sync {
    fn reads(&self) -> Vec<String>;
    fn writes(&self) -> Vec<String>;
    fn outputs(&self) -> Vec<PathBuf>;
    fn check(&self) -> Vec<Problem>;
    fn random(&self) -> bool;
    fn is_cache(&self) -> bool;
    fn build(&self, ctx: &BuildContext) -> Result<Built, StageError>;
}

struct Typed<C, const K: u8>(C);

const SOURCE: u8 = 0;
const STAGE: u8 = 1;
const SINK: u8 = 2;

macro_rules! erase {
    ($trait:ident, $k:expr, $variant:ident) => {
        impl<C: $trait> ErasedConfig for Typed<C, $k> {
            fn reads(&self) -> Vec<String> {
                self.0.reads()
            }
            fn writes(&self) -> Vec<String> {
                self.0.writes()
            }
            fn outputs(&self) -> Vec<PathBuf> {
                self.0.outputs()
            }
            fn check(&self) -> Vec<Problem> {
                self.0.check()
            }
            fn random(&self) -> bool {
                self.0.random()
            }
            fn is_cache(&self) -> bool {
                self.0.is_cache()
            }
            fn build(&self, ctx: &BuildContext) -> Result<Built, StageError> {
                self.0.build(ctx).map(Built::$variant)
            }
        }
    };
}

erase!(SourceConfig, SOURCE, Source);
erase!(StageConfig, STAGE, Stage);
erase!(SinkConfig, SINK, Sink);

type ParseFn = fn(&Node) -> Result<Box<dyn ErasedConfig>, DeError>;

/// One registered component.
#[derive(Clone)]
pub struct Entry {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
    schema: fn() -> Schema,
    parse: ParseFn,
}

impl Entry {
    pub fn schema(&self) -> Schema {
        (self.schema)()
    }

    pub fn parse(&self, params: &Node) -> Result<Box<dyn ErasedConfig>, DeError> {
        (self.parse)(params)
    }

    /// Names of the parameters the config accepts.
    pub fn param_names(&self) -> Vec<String> {
        self.params().into_iter().map(|p| p.name).collect()
    }

    /// Parameters with types, defaults and docs, read from the config's JSON schema.
    pub fn params(&self) -> Vec<ParamDoc> {
        params_of(&self.schema())
    }
}

/// One parameter of a component, for `mtmed3d stages`.
#[derive(Debug, Clone, Serialize)]
pub struct ParamDoc {
    pub name: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    pub doc: String,
}

/// The components a pipeline may use.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<&'static str, Entry>,
}

fn parse_typed<C: Component, const K: u8>(node: &Node) -> Result<Box<dyn ErasedConfig>, DeError>
where
    Typed<C, K>: ErasedConfig,
{
    let config: C = from_node(node)?;
    Ok(Box::new(Typed::<C, K>(config)))
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn source<C: SourceConfig>(&mut self) -> &mut Self {
        self.add::<C>(Kind::Source, parse_typed::<C, SOURCE>)
    }

    pub fn stage<C: StageConfig>(&mut self) -> &mut Self {
        self.add::<C>(Kind::Stage, parse_typed::<C, STAGE>)
    }

    pub fn sink<C: SinkConfig>(&mut self) -> &mut Self {
        self.add::<C>(Kind::Sink, parse_typed::<C, SINK>)
    }

    fn add<C: Component>(&mut self, kind: Kind, parse: ParseFn) -> &mut Self {
        let previous = self.entries.insert(
            C::NAME,
            Entry {
                name: C::NAME,
                kind,
                doc: C::DOC,
                schema: || schemars::schema_for!(C),
                parse,
            },
        );
        assert!(
            previous.is_none(),
            "two components are registered as `{}`",
            C::NAME
        );
        self
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The registered name closest to `name`, preferring components of `kind`.
    pub fn suggest(&self, name: &str, kind: Kind) -> Option<&'static str> {
        let of_kind = self
            .entries
            .values()
            .filter(|e| e.kind == kind)
            .map(|e| e.name);
        nearest(name, of_kind).or_else(|| nearest(name, self.entries.keys().copied()))
    }

    /// Every component, documented, as `mtmed3d stages --json` prints it.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.entries
                .values()
                .map(|e| {
                    serde_json::json!({
                        "name": e.name,
                        "kind": e.kind,
                        "doc": e.doc,
                        "params": e.params(),
                    })
                })
                .collect(),
        )
    }
}

/// The candidate closest to `name` if it is close enough to be a plausible typo.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(name, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn params_of(schema: &Schema) -> Vec<ParamDoc> {
    let Some(object) = schema.as_object() else {
        return Vec::new();
    };
    let definitions = object.get("$defs").and_then(|d| d.as_object());
    let required: Vec<&str> = object
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let Some(properties) = object.get("properties").and_then(|p| p.as_object()) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, prop)| ParamDoc {
            name: name.clone(),
            type_name: type_name(prop, definitions),
            required: required.contains(&name.as_str()),
            default: prop.get("default").cloned(),
            doc: prop
                .get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("")
                .replace('\n', " "),
        })
        .collect()
}

/// A short human form of a JSON-schema type: `integer`, `list of number`, `one of a|b`.
fn type_name(
    prop: &serde_json::Value,
    definitions: Option<&serde_json::Map<String, serde_json::Value>>,
) -> String {
    if let Some(reference) = prop.get("$ref").and_then(|r| r.as_str()) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return match definitions.and_then(|d| d.get(name)) {
            Some(def) => type_name(def, definitions),
            None => name.to_string(),
        };
    }
    if let Some(values) = prop.get("enum").and_then(|e| e.as_array()) {
        let names: Vec<String> = values
            .iter()
            .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
            .collect();
        return format!("one of {}", names.join("|"));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = prop.get(key).and_then(|o| o.as_array()) {
            let mut names: Vec<String> = Vec::new();
            for option in options {
                if let Some(c) = option.get("const") {
                    names.push(c.as_str().map(str::to_string).unwrap_or(c.to_string()));
                } else if option.get("type").and_then(|t| t.as_str()) != Some("null") {
                    names.push(type_name(option, definitions));
                }
            }
            return if names.len() == 1 {
                names.remove(0)
            } else {
                format!("one of {}", names.join("|"))
            };
        }
    }
    match prop.get("type") {
        Some(serde_json::Value::String(t)) if t == "array" => {
            let item = prop
                .get("items")
                .map(|i| type_name(i, definitions))
                .unwrap_or_else(|| "value".into());
            format!("list of {item}")
        }
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(serde_json::Value::Array(types)) => {
            let kinds: Vec<&str> = types
                .iter()
                .filter_map(|t| t.as_str())
                .filter(|t| *t != "null")
                .collect();
            match kinds.as_slice() {
                // `Option<T>`: describe T.
                [one] => {
                    let mut single = prop.clone();
                    single["type"] = serde_json::Value::String(one.to_string());
                    type_name(&single, definitions)
                }
                _ => kinds.join("|"),
            }
        }
        _ => "value".into(),
    }
}
