//! `curves.svg`: a run's loss and top-1 per epoch, training and validation, as a standalone SVG
//! that any browser opens.

use std::fmt::Write;

use super::progress::{EpochRecord, LOSS, TOP1};

/// Size of one panel's plotting area and the margins around it, in pixels.
const WIDTH: f64 = 420.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 60.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 45.0;
const GAP: f64 = 90.0;

/// (split's name, colour) of the two lines of each panel.
const SERIES: [(&str, &str); 2] = [("train", "#1f77b4"), ("valid", "#d62728")];

/// The SVG document of `records`: a panel of the loss, a panel of top-1 (percent).
pub fn curves_svg(records: &[EpochRecord]) -> String {
    let width = LEFT + 2.0 * WIDTH + GAP + 30.0;
    let height = TOP + HEIGHT + BOTTOM;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (index, (title, metric)) in [("loss", LOSS), ("top-1 (%)", TOP1)].iter().enumerate() {
        let x0 = LEFT + index as f64 * (WIDTH + GAP);
        panel(&mut svg, records, x0, title, metric);
    }
    svg.push_str("</svg>\n");
    svg
}

/// The values of `metric` for one split, as (epoch, value), finite ones only.
fn series(records: &[EpochRecord], split: &str, metric: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|record| {
            let metrics = if split == "train" {
                &record.train
            } else {
                &record.valid
            };
            let value = *metrics.get(metric)?;
            value.is_finite().then_some((record.epoch as f64, value))
        })
        .collect()
}

/// A "nice" step between axis ticks for a range of `span` (1, 2 or 5 times a power of ten).
fn tick_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

/// One panel at `x0`: frame, ticks, title, legend and the two lines.
fn panel(svg: &mut String, records: &[EpochRecord], x0: f64, title: &str, metric: &str) {
    let lines: Vec<_> = SERIES
        .iter()
        .map(|&(split, colour)| (split, colour, series(records, split, metric)))
        .collect();
    let points = lines.iter().flat_map(|(_, _, points)| points.iter());
    let (mut low, mut high) = points
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &(_, v)| {
            (l.min(v), h.max(v))
        });
    if !low.is_finite() {
        (low, high) = (0.0, 1.0);
    }
    if high - low < 1e-9 {
        (low, high) = (low - 0.5, high + 0.5);
    }
    let y_step = tick_step(high - low, 5.0);
    let (low, high) = (
        (low / y_step).floor() * y_step,
        (high / y_step).ceil() * y_step,
    );
    let last_epoch = records.last().map_or(1, |r| r.epoch).max(1) as f64;
    let first_epoch = records.first().map_or(1, |r| r.epoch) as f64;
    let (x_low, x_high) = if last_epoch > first_epoch {
        (first_epoch, last_epoch)
    } else {
        (first_epoch - 0.5, first_epoch + 0.5)
    };
    let x = |epoch: f64| x0 + (epoch - x_low) / (x_high - x_low) * WIDTH;
    let y = |value: f64| TOP + (high - value) / (high - low) * HEIGHT;

    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"14\">{title}</text>",
        x0 + WIDTH / 2.0,
        TOP - 15.0
    );
    let _ = writeln!(
        svg,
        "<rect x=\"{x0}\" y=\"{TOP}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"none\" stroke=\"#444\"/>"
    );
    let mut value = low;
    while value <= high + y_step / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{4}</text>",
            y(value),
            x0 + WIDTH,
            x0 - 6.0,
            y(value) + 4.0,
            format_tick(value, y_step)
        );
        value += y_step;
    }
    let x_step = tick_step(x_high - x_low, 8.0).max(1.0);
    let mut epoch = (x_low / x_step).ceil() * x_step;
    while epoch <= x_high + 1e-9 {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{epoch}</text>",
            x(epoch),
            TOP + HEIGHT + 16.0
        );
        epoch += x_step;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text>",
        x0 + WIDTH / 2.0,
        TOP + HEIGHT + 34.0
    );
    for (row, (split, colour, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|&(e, v)| format!("{:.1},{:.1}", x(e), y(v)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            path.join(" ")
        );
        for point in &path {
            let (px, py) = point.split_once(',').expect("x,y");
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"2.5\" fill=\"{colour}\"/>"
            );
        }
        // The legend above the frame, right of the title, where no line can pass.
        let (legend_x, legend_y) = (x0 + WIDTH - 140.0 + row as f64 * 75.0, TOP - 19.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{legend_x}\" y1=\"{legend_y}\" x2=\"{0}\" y2=\"{legend_y}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
             <text x=\"{1}\" y=\"{2}\">{split}</text>",
            legend_x + 20.0,
            legend_x + 25.0,
            legend_y + 4.0
        );
    }
}

/// A tick label with as many decimals as the step needs.
fn format_tick(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: usize, loss: f64, top1: f64) -> EpochRecord {
        let metrics = [(LOSS.to_string(), loss), (TOP1.to_string(), top1)];
        EpochRecord {
            epoch,
            train: metrics.clone().into(),
            valid: metrics.map(|(name, value)| (name, value * 1.1)).into(),
            ..Default::default()
        }
    }

    /// Each panel has one line per split with a point per epoch, inside its frame.
    #[test]
    fn the_plot_has_a_point_per_epoch_and_split() {
        let records: Vec<EpochRecord> = (1..=4)
            .map(|e| record(e, 2.0 / e as f64, 20.0 * e as f64))
            .collect();
        let svg = curves_svg(&records);
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 4 * 4);
        for circle in svg.lines().filter(|l| l.starts_with("<circle")) {
            let number = |key: &str| -> f64 {
                let start = circle.find(key).unwrap() + key.len();
                let end = circle[start..].find('"').unwrap();
                circle[start..start + end].parse().unwrap()
            };
            let (cx, cy) = (number("cx=\""), number("cy=\""));
            assert!((LEFT..=LEFT + 2.0 * WIDTH + GAP).contains(&cx), "{circle}");
            assert!((TOP..=TOP + HEIGHT).contains(&cy), "{circle}");
        }
    }

    /// One epoch, or none, still gives a valid document.
    #[test]
    fn short_runs_plot_without_dividing_by_zero() {
        for records in [vec![], vec![record(1, 1.0, 50.0)]] {
            let svg = curves_svg(&records);
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10.0, 5.0), 2.0);
        assert_eq!(tick_step(0.37, 5.0), 0.1);
        assert_eq!(format_tick(0.3, 0.1), "0.3");
        assert_eq!(format_tick(40.0, 20.0), "40");
    }
}
