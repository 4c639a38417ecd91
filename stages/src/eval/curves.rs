//! Training curves as SVG, drawn from a run's `history.jsonl` (the lines `train` writes).
//!
//! Three panels: the task losses per step (faint) with their epoch means (solid), the
//! validation Dice per region with the grade accuracy, and the task weights chosen by the
//! balancer. SVG needs no font or image library, opens in any browser, and scales without
//! blurring in papers and slides. `train` redraws `curves.svg` after every epoch;
//! `mtmed3d curves HISTORY --out FILE.svg` draws any history.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

/// One plotted line: its name, colour, whether it is drawn faint, and its points.
struct Series {
    name: &'static str,
    colour: &'static str,
    faint: bool,
    points: Vec<(f64, f64)>,
}

impl Series {
    fn new(name: &'static str, colour: &'static str, faint: bool) -> Self {
        Self {
            name,
            colour,
            faint,
            points: Vec::new(),
        }
    }
}

/// The series of one panel, read from a history.
struct Panel {
    title: &'static str,
    x_label: &'static str,
    y_range: Option<(f64, f64)>,
    series: Vec<Series>,
}

const TASKS: [(&str, &str, &str); 3] = [
    ("seg", "segmentation", "#1f77b4"),
    ("cls", "classification", "#d62728"),
    ("det", "detection", "#2ca02c"),
];

/// Reads the history lines. A line that does not parse (a run killed while writing it) is
/// skipped, as are kinds this version does not know.
fn panels(history: &str) -> Result<Vec<Panel>, String> {
    let mut step_losses: Vec<Series> = TASKS
        .iter()
        .map(|(_, name, colour)| Series::new(name, colour, true))
        .collect();
    let mut epoch_losses: Vec<Series> = TASKS
        .iter()
        .map(|(_, name, colour)| Series::new(name, colour, false))
        .collect();
    let mut total = Series::new("total (epoch mean)", "#333333", false);
    let mut dice = vec![
        Series::new("Dice TC", "#e6a700", false),
        Series::new("Dice WT", "#2ca02c", false),
        Series::new("Dice ET", "#d62728", false),
        Series::new("grade accuracy", "#7f4fbf", false),
    ];
    let mut weights: Vec<Series> = TASKS
        .iter()
        .map(|(_, name, colour)| Series::new(name, colour, false))
        .collect();
    let mut steps_seen = 0usize;
    for line in history.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let num = |path: &[&str]| {
            let mut node = &v;
            for key in path {
                node = node.get(key)?;
            }
            node.as_f64().filter(|x| x.is_finite())
        };
        match v.get("kind").and_then(Value::as_str) {
            Some("step") => {
                steps_seen += 1;
                let Some(step) = num(&["step"]) else { continue };
                for (series, (key, _, _)) in step_losses.iter_mut().zip(TASKS) {
                    if let Some(loss) = num(&["losses", key]) {
                        series.points.push((step, loss));
                    }
                }
                if let Some(w) = v.get("weights").and_then(Value::as_array) {
                    for (series, w) in weights.iter_mut().zip(w) {
                        if let Some(w) = w.as_f64().filter(|w| w.is_finite()) {
                            series.points.push((step, w));
                        }
                    }
                }
            }
            Some("epoch") => {
                let Some(epoch) = num(&["epoch"]) else {
                    continue;
                };
                // epoch means sit at the epoch's last step, so both loss curves share an axis
                let x = step_losses[0].points.last().map_or(epoch, |p| p.0);
                for (series, (key, _, _)) in epoch_losses.iter_mut().zip(TASKS) {
                    if let Some(loss) = num(&["mean_losses", key]) {
                        series.points.push((x, loss));
                    }
                }
                if let Some(t) = num(&["mean_total"]) {
                    total.points.push((x, t));
                }
            }
            Some("validation") => {
                let Some(epoch) = num(&["epoch"]) else {
                    continue;
                };
                let x = epoch + 1.0;
                for (series, region) in dice.iter_mut().zip(["TC", "WT", "ET"]) {
                    if let Some(d) = num(&["dice", region]) {
                        series.points.push((x, d));
                    }
                }
                if let Some(a) = num(&["grade_accuracy"]) {
                    dice[3].points.push((x, a));
                }
            }
            _ => {}
        }
    }
    if steps_seen == 0 {
        return Err("it has no training steps (lines with \"kind\": \"step\")".into());
    }
    let mut losses = step_losses;
    losses.extend(epoch_losses);
    losses.push(total);
    Ok(vec![
        Panel {
            title: "Task losses (faint: per step; solid: epoch means)",
            x_label: "step",
            y_range: None,
            series: losses,
        },
        Panel {
            title: "Validation",
            x_label: "epochs trained",
            y_range: Some((0.0, 1.0)),
            series: dice,
        },
        Panel {
            title: "Task weights",
            x_label: "step",
            y_range: None,
            series: weights,
        },
    ])
}

const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 300.0;
const MARGIN: (f64, f64, f64, f64) = (50.0, 16.0, 34.0, 40.0); // left, right, top, bottom

/// Renders a history (the text of `history.jsonl`) as one SVG document.
pub fn render_svg(history: &str, title: &str) -> Result<String, String> {
    let panels = panels(history)?;
    let width = PANEL_W * panels.len() as f64;
    let height = PANEL_H + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="100%" height="100%" fill="white"/><text x="8" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut svg, panel, PANEL_W * i as f64, 30.0);
    }
    svg.push_str("</svg>\n");
    Ok(svg)
}

/// Reads `history` and writes its curves to `out` (under a temporary name, then renamed).
pub fn write_svg(history: &Path, out: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(history)
        .map_err(|e| format!("cannot read {}: {e}", history.display()))?;
    let title = history
        .parent()
        .and_then(|p| p.file_name())
        .map_or_else(|| "training".to_string(), |n| n.to_string_lossy().into());
    let svg = render_svg(&text, &title).map_err(|e| format!("{}: {e}", history.display()))?;
    super::report::write_atomic(out, svg.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn draw_panel(svg: &mut String, panel: &Panel, x0: f64, y0: f64) {
    let (ml, mr, mt, mb) = MARGIN;
    let (left, right) = (x0 + ml, x0 + PANEL_W - mr);
    let (top, bottom) = (y0 + mt, y0 + PANEL_H - mb);
    let all = || panel.series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax) =
        all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut ymin, mut ymax) = panel
        .y_range
        .unwrap_or_else(|| all().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1))));
    if xmin > xmax {
        (xmin, xmax) = (0.0, 1.0);
    }
    if ymin > ymax {
        (ymin, ymax) = (0.0, 1.0);
    }
    if xmax - xmin < 1e-12 {
        xmax = xmin + 1.0;
    }
    if ymax - ymin < 1e-12 {
        ymax = ymin + 1.0;
    }
    if panel.y_range.is_none() {
        // start losses and weights at zero when that costs less than half the height
        if ymin > 0.0 && ymin < ymax {
            ymin = 0.0;
        }
    }
    let sx = |x: f64| left + (x - xmin) / (xmax - xmin) * (right - left);
    let sy = |y: f64| bottom - (y - ymin) / (ymax - ymin) * (bottom - top);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" font-weight="bold">{}</text>"#,
        left,
        top - 10.0,
        escape(panel.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        right - left,
        bottom - top
    );
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let (xv, yv) = (xmin + f * (xmax - xmin), ymin + f * (ymax - ymin));
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{right}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text><text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            left - 4.0,
            sy(yv) + 4.0,
            tick(yv),
            sx(xv),
            bottom + 14.0,
            tick(xv),
            y = sy(yv),
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        (left + right) / 2.0,
        bottom + 30.0,
        panel.x_label
    );
    let mut legend_y = top + 14.0;
    for s in panel.series.iter().filter(|s| !s.points.is_empty()) {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y.clamp(ymin, ymax))))
            .collect();
        let (opacity, width) = if s.faint { (0.3, 1.0) } else { (1.0, 1.8) };
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}" points="{}"/>"#,
            s.colour,
            path.join(" ")
        );
        if s.points.len() < 20 {
            for &(x, y) in &s.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{}" fill-opacity="{opacity}"/>"#,
                    sx(x),
                    sy(y.clamp(ymin, ymax)),
                    s.colour
                );
            }
        }
        if !s.faint {
            let last = s.points.last().map_or(0.0, |p| p.1);
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{legend_y:.1}" fill="{}">{} {}</text>"#,
                right - 150.0,
                s.colour,
                escape(s.name),
                tick(last)
            );
            legend_y += 13.0;
        }
    }
}

fn tick(v: f64) -> String {
    if v.abs() >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e6) {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> String {
        let mut lines = Vec::new();
        for step in 1..=4 {
            lines.push(format!(
                r#"{{"kind":"step","step":{step},"epoch":{},"losses":{{"seg":{},"cls":0.5,"det":1.0}},"weights":[1.0,0.9,1.1]}}"#,
                (step - 1) / 2,
                2.0 / f64::from(step)
            ));
            if step % 2 == 0 {
                lines.push(format!(
                    r#"{{"kind":"epoch","epoch":{},"mean_losses":{{"seg":1.0,"cls":0.5,"det":1.0}},"mean_total":2.5}}"#,
                    step / 2 - 1
                ));
            }
        }
        lines.push(
            r#"{"kind":"validation","epoch":1,"dice":{"TC":0.5,"WT":0.8,"ET":0.4},"grade_accuracy":1.0}"#
                .into(),
        );
        lines.push(r#"{"kind":"step","step":5,"losses":{"se"#.into()); // cut by a kill
        lines.join("\n")
    }

    #[test]
    fn reads_steps_epochs_and_validation() {
        let panels = panels(&history()).unwrap();
        assert_eq!(panels.len(), 3);
        let losses = &panels[0].series;
        assert_eq!(
            losses[0].points,
            vec![(1.0, 2.0), (2.0, 1.0), (3.0, 2.0 / 3.0), (4.0, 0.5)]
        );
        // epoch means are placed at their epoch's last step
        assert_eq!(losses[3].points, vec![(2.0, 1.0), (4.0, 1.0)]);
        assert_eq!(losses[6].points, vec![(2.0, 2.5), (4.0, 2.5)]);
        let dice = &panels[1].series;
        assert_eq!(dice[1].points, vec![(2.0, 0.8)]);
        assert_eq!(dice[3].points, vec![(2.0, 1.0)]);
        assert_eq!(panels[2].series[1].points.len(), 4);
    }

    #[test]
    fn renders_a_well_formed_document() {
        let svg = render_svg(&history(), "run <a&b>").unwrap();
        assert!(svg.starts_with("<svg "));
        assert!(svg.ends_with("</svg>\n"));
        assert!(svg.contains("run &lt;a&amp;b&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 3 + 3 + 1 + 4 + 3);
        assert!(svg.contains("Dice WT 0.800"));
    }

    #[test]
    fn a_history_without_steps_is_refused() {
        let e = render_svg(r#"{"kind":"validation","epoch":0}"#, "x").unwrap_err();
        assert!(e.contains("no training steps"), "{e}");
    }
}
