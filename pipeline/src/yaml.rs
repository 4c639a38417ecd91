//! A YAML document as a tree of located nodes, and a serde deserializer over it whose
//! errors carry the line and column of the node that caused them.
//!
//! serde-saphyr parses the text (it never panics on bad input and reports syntax errors with
//! their position); every node is captured with its location through `serde_saphyr::Spanned`.
//! Typed stage configs are then deserialized from the tree one stage at a time, so that a
//! mistake in one stage does not hide the mistakes in the others.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// A 1-based line and column in the pipeline file. `Loc::UNKNOWN` (0:0) for values that did
/// not come from the file (for example `--set` overrides).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

impl Loc {
    pub const UNKNOWN: Loc = Loc { line: 0, column: 0 };

    pub fn new(line: u64, column: u64) -> Self {
        Loc { line, column }
    }

    pub fn is_known(&self) -> bool {
        self.line > 0
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One YAML node with the location it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub loc: Loc,
    pub value: Value,
}

/// The value of a node. Mappings keep their keys as nodes so that errors about a key (an
/// unknown field, an unknown stage) point at the key itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// Integers above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// How the value is described in error messages ("a mapping", "the string `x`").
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".into(),
            Value::Bool(b) => format!("the boolean `{b}`"),
            Value::Int(i) => format!("the integer `{i}`"),
            Value::UInt(u) => format!("the integer `{u}`"),
            Value::Float(x) => format!("the number `{x}`"),
            Value::Str(s) => format!("the string `{s}`"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }
}

impl Node {
    pub fn new(loc: Loc, value: Value) -> Self {
        Node { loc, value }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The value stored under `key` in a mapping node, with the key node.
    pub fn get(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// Depth-first search for a string scalar equal to `text`; used to point an error about a
    /// field name at the place in a stage's config where that name is written.
    pub fn find_str(&self, text: &str) -> Option<Loc> {
        match &self.value {
            Value::Str(s) if s == text => Some(self.loc),
            Value::Seq(items) => items.iter().find_map(|n| n.find_str(text)),
            Value::Map(entries) => entries.iter().find_map(|(_, v)| v.find_str(text)),
            _ => None,
        }
    }

    /// Converts to JSON, for canonical config hashing and display.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::UInt(u) => J::from(*u),
            Value::Float(x) => serde_json::Number::from_f64(*x)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (key_text(k), v.to_json()))
                    .collect(),
            ),
        }
    }
}

fn key_text(key: &Node) -> String {
    match &key.value {
        Value::Str(s) => s.clone(),
        other => other.to_json_text(),
    }
}

impl Value {
    fn to_json_text(&self) -> String {
        Node::new(Loc::UNKNOWN, self.clone()).to_json().to_string()
    }
}

/// A YAML syntax error, located.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub loc: Loc,
    pub message: String,
}

/// Parses YAML text into a located tree. An empty document parses to a `Null` node.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    };
    let parsed: Option<LocatedNode> =
        serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            let loc = e
                .location()
                .map(|l| Loc::new(l.line(), l.column()))
                .unwrap_or(Loc::new(1, 1));
            SyntaxError {
                loc,
                message: first_line(&e.to_string()),
            }
        })?;
    Ok(parsed
        .map(|n| n.0)
        .unwrap_or_else(|| Node::new(Loc::new(1, 1), Value::Null)))
}

/// Parses a scalar given on the command line (`--set key=value`) with YAML's rules, so that
/// `0.5` is a number, `true` a boolean and `[1, 2]` a list.
pub fn parse_override(text: &str) -> Result<Node, SyntaxError> {
    let mut node = parse(text)?;
    clear_locations(&mut node);
    Ok(node)
}

fn clear_locations(node: &mut Node) {
    node.loc = Loc::UNKNOWN;
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(clear_locations),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            clear_locations(k);
            clear_locations(v);
        }),
        _ => {}
    }
}

fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_string()
}

/// Newtype through which serde-saphyr hands us each node with its location.
struct LocatedNode(Node);

impl<'de> Deserialize<'de> for LocatedNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<RawValue>::deserialize(deserializer)?;
        let loc = Loc::new(spanned.referenced.line(), spanned.referenced.column());
        Ok(LocatedNode(Node::new(loc, spanned.value.0)))
    }
}

struct RawValue(Value);

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<RawValue, E> {
        Ok(RawValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<RawValue, E> {
        Ok(RawValue(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawValue, D::Error> {
        RawValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue(Value::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<RawValue, E> {
        Ok(RawValue(match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(v),
        }))
    }
    fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue(Value::Float(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue(Value::Str(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue(Value::Str(v)))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(LocatedNode(node)) = seq.next_element()? {
            items.push(node);
        }
        Ok(RawValue(Value::Seq(items)))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(LocatedNode(key)) = map.next_key()? {
            let LocatedNode(value) = map.next_value()?;
            entries.push((key, value));
        }
        Ok(RawValue(Value::Map(entries)))
    }
}

/// What went wrong while deserializing a typed config from a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeErrorKind {
    UnknownField,
    MissingField,
    WrongType,
    InvalidValue,
}

/// A deserialization error with the location of the offending node.
#[derive(Debug, Clone)]
pub struct DeError {
    pub kind: DeErrorKind,
    pub message: String,
    /// Accepted names, for unknown fields and unknown variants (for suggestions).
    pub expected: Vec<String>,
    /// The unknown name itself.
    pub name: Option<String>,
    pub loc: Option<Loc>,
}

impl DeError {
    fn new(kind: DeErrorKind, message: String) -> Self {
        DeError {
            kind,
            message,
            expected: Vec::new(),
            name: None,
            loc: None,
        }
    }

    fn at(mut self, loc: Loc) -> Self {
        if self.loc.is_none() && loc.is_known() {
            self.loc = Some(loc);
        }
        self
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(DeErrorKind::InvalidValue, msg.to_string())
    }
    fn invalid_type(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(
            DeErrorKind::WrongType,
            format!(
                "wrong type: found {}, expected {}",
                describe_unexpected(&unexp),
                plain_expected(&exp.to_string())
            ),
        )
    }
    fn invalid_value(unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        DeError::new(
            DeErrorKind::InvalidValue,
            format!("invalid value: {unexp}, expected {exp}"),
        )
    }
    fn invalid_length(len: usize, exp: &dyn de::Expected) -> Self {
        DeError::new(
            DeErrorKind::InvalidValue,
            format!(
                "wrong number of elements: found {len}, expected {}",
                plain_expected(&exp.to_string())
            ),
        )
    }
    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        let mut e = DeError::new(
            DeErrorKind::InvalidValue,
            format!(
                "unknown value `{variant}`, expected one of {}",
                quoted_list(expected)
            ),
        );
        e.expected = expected.iter().map(|s| s.to_string()).collect();
        e.name = Some(variant.to_string());
        e
    }
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        let mut e = DeError::new(
            DeErrorKind::UnknownField,
            format!("unknown field `{field}`"),
        );
        e.expected = expected.iter().map(|s| s.to_string()).collect();
        e.name = Some(field.to_string());
        e
    }
    fn missing_field(field: &'static str) -> Self {
        let mut e = DeError::new(
            DeErrorKind::MissingField,
            format!("missing field `{field}`"),
        );
        e.name = Some(field.to_string());
        e
    }
}

/// The value found, in the words of a YAML file rather than of Rust.
fn describe_unexpected(unexp: &de::Unexpected<'_>) -> String {
    use de::Unexpected as U;
    match unexp {
        U::Bool(b) => format!("the boolean `{b}`"),
        U::Unsigned(n) => format!("the integer `{n}`"),
        U::Signed(n) => format!("the integer `{n}`"),
        U::Float(x) => format!("the number `{x}`"),
        U::Char(c) => format!("the string `{c}`"),
        U::Str(s) => format!("the string `{s}`"),
        U::Unit => "null".into(),
        U::Seq => "a list".into(),
        U::Map => "a mapping".into(),
        other => other.to_string(),
    }
}

/// What was expected, with Rust type names translated for someone writing YAML.
fn plain_expected(expected: &str) -> String {
    match expected {
        "f32" | "f64" => "a number".into(),
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number ≥ 0".into(),
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
        "a boolean" => "`true` or `false`".into(),
        "a sequence" => "a list".into(),
        other if other.starts_with("struct ") => "a mapping of parameter names to values".into(),
        other if other.starts_with("an array of length ") => {
            format!("a list of {}", &other["an array of length ".len()..])
        }
        other => other.to_string(),
    }
}

/// `a`, `b` or `c`, for messages.
pub fn quoted_list(names: &[&str]) -> String {
    match names {
        [] => "nothing".into(),
        [one] => format!("`{one}`"),
        [init @ .., last] => format!(
            "{} or `{last}`",
            init.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Deserializes a typed value from a node; errors carry the location of the node at fault.
pub fn from_node<T: de::DeserializeOwned>(node: &Node) -> Result<T, DeError> {
    T::deserialize(NodeDeserializer(node)).map_err(|e| e.at(node.loc))
}

struct NodeDeserializer<'a>(&'a Node);

impl NodeDeserializer<'_> {
    fn wrong_type(&self, exp: &dyn de::Expected) -> DeError {
        DeError::new(
            DeErrorKind::WrongType,
            format!(
                "wrong type: found {}, expected {exp}",
                self.0.value.describe()
            ),
        )
        .at(self.0.loc)
    }
}

macro_rules! forward_to_any {
    ($($method:ident)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            self.deserialize_any(visitor)
        })*
    };
}

impl<'de, 'a> Deserializer<'de> for NodeDeserializer<'a> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let loc = self.0.loc;
        let result = match &self.0.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::UInt(u) => visitor.visit_u64(*u),
            Value::Float(x) => visitor.visit_f64(*x),
            Value::Str(s) => visitor.visit_str(s),
            Value::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter(),
            }),
            Value::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                pending: None,
            }),
        };
        result.map_err(|e| e.at(loc))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let loc = self.0.loc;
        let result = match &self.0.value {
            Value::Str(_) => visitor.visit_enum(EnumAccess {
                variant: self.0,
                content: None,
            }),
            Value::Map(entries) if entries.len() == 1 => visitor.visit_enum(EnumAccess {
                variant: &entries[0].0,
                content: Some(&entries[0].1),
            }),
            _ => Err(self.wrong_type(&"a name, or a mapping with one name as its key")),
        };
        result.map_err(|e| e.at(loc))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.0.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.wrong_type(&"null")),
        }
    }

    forward_to_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_seq
        deserialize_map deserialize_identifier deserialize_ignored_any
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        match &self.0.value {
            // `stage: {}` and `stage:` (null) both mean "all defaults".
            Value::Null => {
                let empty: [(Node, Node); 0] = [];
                visitor
                    .visit_map(MapAccess {
                        entries: empty.iter(),
                        pending: None,
                    })
                    .map_err(|e| e.at(self.0.loc))
            }
            Value::Map(_) => self.deserialize_any(visitor),
            _ => Err(self.wrong_type(&"a mapping of parameter names to values")),
        }
    }
}

struct SeqAccess<'a> {
    items: std::slice::Iter<'a, Node>,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqAccess<'a> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDeserializer(node))
                .map(Some)
                .map_err(|e| e.at(node.loc)),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct MapAccess<'a> {
    entries: std::slice::Iter<'a, (Node, Node)>,
    pending: Option<&'a Node>,
}

impl<'de, 'a> de::MapAccess<'de> for MapAccess<'a> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match self.entries.next() {
            Some((key, value)) => {
                self.pending = Some(value);
                seed.deserialize(NodeDeserializer(key))
                    .map(Some)
                    .map_err(|e| e.at(key.loc))
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let value = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a value was requested before its key"))?;
        seed.deserialize(NodeDeserializer(value))
            .map_err(|e| e.at(value.loc))
    }
}

struct EnumAccess<'a> {
    variant: &'a Node,
    content: Option<&'a Node>,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = DeError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAccess<'a>), DeError> {
        let name = self
            .variant
            .as_str()
            .ok_or_else(|| NodeDeserializer(self.variant).wrong_type(&"a name"))?;
        let value = seed
            .deserialize(name.into_deserializer())
            .map_err(|e: DeError| e.at(self.variant.loc))?;
        Ok((
            value,
            VariantAccess {
                content: self.content,
                loc: self.variant.loc,
            },
        ))
    }
}

struct VariantAccess<'a> {
    content: Option<&'a Node>,
    loc: Loc,
}

impl<'de, 'a> de::VariantAccess<'de> for VariantAccess<'a> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        match self.content {
            None => Ok(()),
            Some(node) if node.value == Value::Null => Ok(()),
            Some(node) => Err(NodeDeserializer(node).wrong_type(&"no parameters")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        match self.content {
            Some(node) => seed.deserialize(NodeDeserializer(node)),
            None => Err(
                DeError::new(DeErrorKind::WrongType, "this value needs parameters".into())
                    .at(self.loc),
            ),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        match self.content {
            Some(node) => NodeDeserializer(node).deserialize_any(visitor),
            None => {
                Err(DeError::new(DeErrorKind::WrongType, "expected a list".into()).at(self.loc))
            }
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let null = Node::new(self.loc, Value::Null);
        let node = self.content.unwrap_or(&null);
        NodeDeserializer(node).deserialize_struct("", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        prob: f64,
        #[serde(default)]
        axes: Vec<usize>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Center,
        Foreground,
    }

    #[test]
    fn nodes_carry_key_and_value_locations() {
        let doc = parse("a: 1\nstages:\n  - flip: {prob: 0.5}\n").unwrap();
        let (key, value) = doc.get("stages").unwrap();
        assert_eq!(key.loc, Loc::new(2, 1));
        let entry = &value.as_seq().unwrap()[0];
        let (stage_key, params) = &entry.as_map().unwrap()[0];
        assert_eq!(stage_key.loc, Loc::new(3, 5));
        let (prob_key, prob) = params.get("prob").unwrap();
        assert_eq!(prob_key.loc, Loc::new(3, 12));
        assert_eq!(prob.loc, Loc::new(3, 18));
        assert_eq!(prob.value, Value::Float(0.5));
    }

    #[test]
    fn typed_errors_point_at_the_offending_node() {
        let doc = parse("prob: 0.5\naxes: [0, x]\n").unwrap();
        let err = from_node::<Cfg>(&doc).unwrap_err();
        assert_eq!(err.kind, DeErrorKind::WrongType);
        assert_eq!(err.loc, Some(Loc::new(2, 11)));

        let doc = parse("prob: 0.5\nprobb: 1\n").unwrap();
        let err = from_node::<Cfg>(&doc).unwrap_err();
        assert_eq!(err.kind, DeErrorKind::UnknownField);
        assert_eq!(err.loc, Some(Loc::new(2, 1)));
        assert_eq!(err.name.as_deref(), Some("probb"));

        let doc = parse("axes: [1]\n").unwrap();
        let err = from_node::<Cfg>(&doc).unwrap_err();
        assert_eq!(err.kind, DeErrorKind::MissingField);

        let doc = parse("prob: 1\nmode: centre\n").unwrap();
        let err = from_node::<Cfg>(&doc).unwrap_err();
        assert_eq!(err.kind, DeErrorKind::InvalidValue);
        assert_eq!(err.loc, Some(Loc::new(2, 7)));
        assert!(err.message.contains("`center`"), "{}", err.message);
    }

    #[test]
    fn integers_are_accepted_where_numbers_are_expected() {
        let doc = parse("prob: 1\nmode: foreground\n").unwrap();
        let cfg: Cfg = from_node(&doc).unwrap();
        assert_eq!(
            cfg,
            Cfg {
                prob: 1.0,
                axes: vec![],
                mode: Some(Mode::Foreground)
            }
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.loc.line >= 1, "{err:?}");
        let err = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(err.loc.line, 2, "{err:?}");
    }
}
