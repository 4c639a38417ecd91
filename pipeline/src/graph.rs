//! The wired pipeline as a Mermaid or Graphviz DOT diagram (`mtmed3d graph`).

use crate::config::{Plan, Planned};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

fn label(p: &Planned) -> String {
    let mut text = p.name.clone();
    if p.options.workers > 1 {
        text.push_str(&format!(" ×{}", p.options.workers));
    }
    let writes = p.config.writes();
    if !writes.is_empty() {
        text.push_str(&format!("\\nwrites: {}", writes.join(", ")));
    }
    text
}

/// Renders the plan; edges carry the channel capacity.
pub fn render(plan: &Plan, format: GraphFormat) -> String {
    let nodes: Vec<(String, &Planned)> = plan
        .components()
        .enumerate()
        .map(|(i, p)| (format!("n{i}"), p))
        .collect();
    let chain_end = plan.stages.len();
    let mut edges: Vec<(usize, usize, usize)> = Vec::new();
    for i in 0..chain_end {
        edges.push((i, i + 1, nodes[i + 1].1.options.queue));
    }
    for s in 0..plan.sinks.len() {
        let to = chain_end + 1 + s;
        edges.push((chain_end, to, nodes[to].1.options.queue));
    }
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for (id, p) in &nodes {
                let text = label(p).replace("\\n", "<br/>").replace('"', "'");
                let shape = match p.kind {
                    crate::registry::Kind::Source => format!("{id}[(\"{text}\")]"),
                    crate::registry::Kind::Stage => format!("{id}[\"{text}\"]"),
                    crate::registry::Kind::Sink => format!("{id}[/\"{text}\"/]"),
                };
                out.push_str(&format!("    {shape}\n"));
            }
            for (a, b, q) in edges {
                out.push_str(&format!("    n{a} -->|queue {q}| n{b}\n"));
            }
        }
        GraphFormat::Dot => {
            out.push_str(&format!(
                "digraph \"{}\" {{\n    rankdir=LR;\n",
                plan.name.replace('"', "'")
            ));
            for (id, p) in &nodes {
                let shape = match p.kind {
                    crate::registry::Kind::Source => "cylinder",
                    crate::registry::Kind::Stage => "box",
                    crate::registry::Kind::Sink => "parallelogram",
                };
                out.push_str(&format!(
                    "    {id} [label=\"{}\", shape={shape}];\n",
                    label(p).replace('"', "'")
                ));
            }
            for (a, b, q) in edges {
                out.push_str(&format!("    n{a} -> n{b} [label=\"queue {q}\"];\n"));
            }
            out.push_str("}\n");
        }
    }
    out
}
