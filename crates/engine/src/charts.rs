//! The dashboard's charts, drawn on the server as SVG (plotters): the spot
//! price of each allowed offering over the last days with the ceiling drawn
//! across, and a pool's desired and current units over time. The x axis is
//! hours before now.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Chart size in pixels.
const SIZE: (u32, u32) = (720, 260);

/// Line colours, one per series in turn.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line: its label and `(unix seconds, value)` points by time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points by time.
    pub points: Vec<(i64, f64)>,
}

/// A step line from samples: each value holds until the next sample, and
/// the last one until `until`.
fn steps(points: &[(i64, f64)], since: i64, until: i64) -> Vec<(f64, f64)> {
    let hours = |t: i64| (t.max(since) - until) as f64 / 3600.0;
    let mut out = Vec::new();
    for (i, &(t, v)) in points.iter().enumerate() {
        if i > 0 {
            out.push((hours(t), points[i - 1].1));
        }
        out.push((hours(t), v));
    }
    if let Some(&(_, v)) = points.last() {
        out.push((0.0, v));
    }
    out
}

/// A chart to draw: series (and a ceiling, if any) over `[since, until]`.
#[derive(Debug, Clone, Copy)]
pub struct Chart<'a> {
    /// The caption.
    pub title: &'a str,
    /// What the y axis counts (`USD/hour`, `units`).
    pub unit: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// A horizontal line: the price ceiling.
    pub ceiling: Option<f64>,
    /// Unix seconds where the window starts.
    pub since: i64,
    /// Unix seconds where it ends (now).
    pub until: i64,
}

/// Draws the chart as an SVG document. Nothing to draw gives a chart that
/// says so.
pub fn svg(chart: &Chart<'_>) -> String {
    let mut out = String::new();
    if let Err(e) = draw(&mut out, chart) {
        tracing::warn!("drawing the chart {:?} failed: {e}", chart.title);
    }
    out
}

fn draw(out: &mut String, chart: &Chart<'_>) -> Result<(), String> {
    let &Chart {
        title,
        unit,
        series,
        ceiling,
        since,
        until,
    } = chart;
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(ceiling)
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    // From the first sample in the window (at least an hour back): a
    // daemon started this morning does not get a three-day empty chart.
    let first = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .min()
        .unwrap_or(since)
        .max(since);
    let left = ((first - until) as f64 / 3600.0).min(-1.0);
    let short = left > -3.0;
    let decimals = if unit == "units" { 1 } else { 4 };
    let caption = if series.iter().all(|s| s.points.is_empty()) {
        format!("{title} (no samples yet)")
    } else {
        title.to_owned()
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(left..0.0, 0.0..top)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(if short {
            "minutes before now"
        } else {
            "hours before now"
        })
        .y_desc(unit)
        .x_label_formatter(&|h| {
            if short {
                format!("{:.0}m", h * 60.0)
            } else {
                format!("{h:.0}h")
            }
        })
        .y_label_formatter(&|v| format!("{v:.decimals$}"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    draw_lines(&mut chart, series, since, until)?;
    if let Some(c) = ceiling {
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(LineSeries::new([(left, c), (0.0, c)], red.stroke_width(1)))
            .map_err(|x| e(&x))?
            .label(format!("ceiling {c}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], red));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

/// Each series as a step line with its samples as dots.
fn draw_lines(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    series: &[Series],
    since: i64,
    until: i64,
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                steps(&s.points, since, until),
                colour.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
            });
        // The samples themselves, as dots: what was actually read.
        chart
            .draw_series(s.points.iter().map(|&(t, v)| {
                Circle::new(
                    ((t.max(since) - until) as f64 / 3600.0, v),
                    2,
                    colour.filled(),
                )
            }))
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_chart_has_a_line_per_offering_dots_per_sample_and_the_ceiling() {
        let series = [
            Series {
                label: "t3.micro us-east-1a".into(),
                points: vec![(1000, 0.003), (4600, 0.004)],
            },
            Series {
                label: "t3.micro us-east-1b".into(),
                points: vec![(2000, 0.005)],
            },
        ];
        let out = svg(&Chart {
            title: "box dev",
            unit: "USD/hour",
            series: &series,
            ceiling: Some(0.02),
            since: 0,
            until: 7200,
        });
        assert!(out.starts_with("<svg"), "{out}");
        assert!(out.contains("t3.micro us-east-1a") && out.contains("ceiling 0.02"));
        assert_eq!(out.matches("<circle").count(), 3, "one dot per sample");
        assert!(
            out.matches("<polyline").count() >= 3,
            "two lines and the ceiling"
        );
        let empty = svg(&Chart {
            title: "box web",
            unit: "USD/hour",
            series: &[],
            ceiling: Some(0.02),
            since: 0,
            until: 7200,
        });
        assert!(empty.contains("no samples yet"));
    }

    #[test]
    fn steps_hold_each_value_until_the_next_sample() {
        assert_eq!(
            steps(&[(0, 1.0), (3600, 2.0)], 0, 7200),
            [(-2.0, 1.0), (-1.0, 1.0), (-1.0, 2.0), (0.0, 2.0)]
        );
    }
}
