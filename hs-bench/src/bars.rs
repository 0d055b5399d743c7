//! `hs-bench bars`: a bar chart of measured figures against their floors, for the documents
//! (the game's per-move stall, failover times). The input is JSON lines, one bar each:
//! `{"label":"async","p50":2.1,"p99":6.3,"floor":2.6}` (`p99` and `floor` optional), as the
//! benchmarks' `--json` outputs are reduced to by hand or by a script; each bar shows the p50,
//! a whisker up to the p99 and a black tick at the floor measured in the same run, and its
//! label carries the ratio p50 / floor.

use std::path::Path;

use serde::Deserialize;

/// One bar.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Bar {
    /// What was measured.
    pub label: String,
    /// The median.
    pub p50: f64,
    /// The 99th percentile, if measured.
    #[serde(default)]
    pub p99: Option<f64>,
    /// The floor it is compared with, from the same run.
    #[serde(default)]
    pub floor: Option<f64>,
}

impl Bar {
    /// The label with the ratio to the floor, as drawn under the bar.
    pub fn caption(&self) -> String {
        match self.floor {
            Some(f) if f > 0.0 => format!("{} ({:.2}x)", self.label, self.p50 / f),
            _ => self.label.clone(),
        }
    }
}

/// Reads the bars from JSON lines (blank lines skipped); errors name the line.
pub fn parse(text: &str) -> Result<Vec<Bar>, String> {
    let mut bars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bar: Bar =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}: {line}", i + 1))?;
        for (what, v) in [
            ("p50", Some(bar.p50)),
            ("p99", bar.p99),
            ("floor", bar.floor),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v >= 0.0)
            {
                return Err(format!("line {}: {what} = {v} is not a duration", i + 1));
            }
        }
        bars.push(bar);
    }
    if bars.is_empty() {
        return Err("no bars in the input".to_owned());
    }
    Ok(bars)
}

/// Draws `bars` into an SVG file at `path`.
pub fn draw(
    path: &Path,
    bars: &[Bar],
    title: &str,
    unit: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let top = bars
        .iter()
        .flat_map(|b| [Some(b.p50), b.p99, b.floor])
        .flatten()
        .fold(0.0_f64, f64::max)
        * 1.15;
    let top = if top > 0.0 { top } else { 1.0 };
    let n = bars.len();
    let root = SVGBackend::new(path, (160 * n as u32 + 200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(56)
        .y_label_area_size(72)
        .build_cartesian_2d((0..n).into_segmented(), 0.0..top)?;
    let captions: Vec<String> = bars.iter().map(Bar::caption).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => captions.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .y_desc(format!("p50 bar, p99 whisker, floor tick ({unit})"))
        .draw()?;
    let blue = RGBColor(70, 110, 190);
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let mut r = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), b.p50),
            ],
            blue.filled(),
        );
        r.set_margin(0, 0, 30, 30);
        r
    }))?;
    for (i, b) in bars.iter().enumerate() {
        if let Some(p99) = b.p99 {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), b.p50),
                    (SegmentValue::CenterOf(i), p99),
                ],
                RED.stroke_width(2),
            )))?;
        }
        if let Some(f) = b.floor {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(SegmentValue::Exact(i), f), (SegmentValue::Exact(i + 1), f)],
                BLACK.stroke_width(3),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_parse_with_optional_fields_and_name_the_ratio() {
        let bars = parse(
            "{\"label\":\"async\",\"p50\":2.0,\"p99\":6.0,\"floor\":4.0}\n\n{\"label\":\"x\",\"p50\":1}\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bars.len(), 2);
        assert_eq!(bars[0].caption(), "async (0.50x)");
        assert_eq!(bars[1].caption(), "x");
        assert_eq!(bars[1].p99, None);
    }

    #[test]
    fn a_bad_line_is_named_and_an_empty_input_refused() {
        let err = parse("{\"label\":\"a\",\"p50\":1}\n{\"label\":\"b\"}\n")
            .err()
            .unwrap_or_default();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = parse("{\"label\":\"a\",\"p50\":-1}\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("not a duration"), "{err}");
        assert!(parse("\n").is_err());
    }

    #[test]
    fn a_chart_is_written() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("c.svg");
        let bars = parse("{\"label\":\"a\",\"p50\":1.5,\"p99\":3,\"floor\":1}\n")
            .unwrap_or_else(|e| panic!("{e}"));
        draw(&path, &bars, "t", "us").unwrap_or_else(|e| panic!("{e}"));
        let svg = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(svg.contains("a (1.50x)"), "{svg}");
    }
}
