//! The tools' SVG charts (plotters), drawn here once: bars (a median with its min–max spread,
//! or a single value) on a linear or log axis, and one run's tasks and heap over time. The
//! benchmarks' charts ([`crate::report`]: `docs/bench/*.svg`) and the load levels' chart
//! ([`crate::load`]: `target/load/<transport>.svg`) and a cluster's failover
//! ([`crate::cluster`]: `target/cluster/<transport>.svg`) are made of these.
//!
//! ```
//! use eventbus_bench::charts::{self, Axis, Bar};
//!
//! let data = [Bar::new("raw", 1.0), Bar::new("bus", 0.64).spread(0.6, 0.7)];
//! let svg = charts::render((480, 360), |root| {
//!     charts::bars(root, "bus / raw", &data, Axis::Linear, |v| format!("{v:.2}×"))
//! })
//! .unwrap();
//! assert!(svg.starts_with("<svg"));
//! ```

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::scenario::Timeline;

/// What drawing a chart can fail with.
pub type Error = Box<dyn std::error::Error>;

/// A region of an SVG being drawn.
pub type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The first series' colour (and bars' default).
pub const BLUE: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// The second series' colour.
pub const ORANGE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
/// The third series' colour.
pub const RED: RGBColor = RGBColor(0xd6, 0x27, 0x28);
/// Markers and borders.
pub const GREY: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// An SVG of `size` pixels on a white background, drawn by `draw`.
pub fn render(
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), Error>,
) -> Result<String, Error> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// Writes the SVG [`render`] makes to `path`, creating its directory.
pub fn write(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&Area<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let svg = render(size, draw)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)?;
    Ok(())
}

/// One bar of [`bars`].
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Under the bar.
    pub label: String,
    /// Its height (a median, say).
    pub value: f64,
    /// Smallest and largest of what `value` sums up, drawn as a whisker.
    pub spread: Option<(f64, f64)>,
    /// Its colour.
    pub colour: RGBColor,
}

impl Bar {
    /// A [`BLUE`] bar of `value`, without a spread.
    pub fn new(label: impl Into<String>, value: f64) -> Self {
        Bar {
            label: label.into(),
            value,
            spread: None,
            colour: BLUE,
        }
    }
    /// With a min–max whisker.
    pub fn spread(mut self, min: f64, max: f64) -> Self {
        self.spread = Some((min, max));
        self
    }
    /// In `colour`.
    pub fn colour(mut self, colour: RGBColor) -> Self {
        self.colour = colour;
        self
    }
    /// The highest point drawn.
    fn top(&self) -> f64 {
        self.spread
            .map_or(self.value, |(_, max)| max.max(self.value))
    }
    /// The lowest point drawn.
    fn bottom(&self) -> f64 {
        self.spread
            .map_or(self.value, |(min, _)| min.min(self.value))
    }
}

/// The value axis of [`bars`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// From zero.
    Linear,
    /// Powers of ten, from one below the smallest value: for figures spanning magnitudes.
    Log,
}

/// A bar per item of `data`, each labelled with its value (by `fmt`, which also labels the
/// axis), with a whisker where it has a spread.
pub fn bars(
    area: &Area<'_>,
    title: &str,
    data: &[Bar],
    axis: Axis,
    fmt: fn(f64) -> String,
) -> Result<(), Error> {
    let log = axis == Axis::Log;
    // On a log scale, bars are drawn in log10 space from a power of ten below the smallest.
    let scale = |v: f64| if log { v.max(1.0).log10() } else { v };
    let unscale = |v: f64| if log { 10f64.powf(v) } else { v };
    let largest = data.iter().map(|d| scale(d.top())).fold(0.0, f64::max);
    let (bottom, top) = if log {
        let smallest = data
            .iter()
            .map(|d| scale(d.bottom()))
            .fold(f64::MAX, f64::min);
        let bottom = if smallest > largest {
            0.0
        } else {
            smallest.floor()
        };
        (bottom, largest.ceil().max(bottom + 1.0) + 0.25)
    } else if largest > 0.0 {
        (0.0, largest * 1.2)
    } else {
        (0.0, 1.0)
    };
    let n = data.len().max(1) as i32;
    let y_label_area = 70;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d((0..n).into_segmented(), bottom..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(data.len().max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => data
                .get(*i as usize)
                .map(|d| d.label.clone())
                .unwrap_or_default(),
            SegmentValue::Last => String::new(),
        })
        .x_label_style(("sans-serif", 11))
        .y_label_formatter(&|v| fmt(unscale(*v)))
        .y_labels(if log { (top - bottom) as usize + 1 } else { 6 })
        .draw()?;
    // An eighth of each bar's slot is left empty on either side.
    let slot = area.dim_in_pixel().0.saturating_sub(y_label_area + 24) / n as u32;
    let gap = (slot / 8).max(1);
    chart.draw_series(data.iter().enumerate().map(|(i, d)| {
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i as i32), bottom),
                (SegmentValue::Exact(i as i32 + 1), scale(d.value)),
            ],
            d.colour.mix(0.8).filled(),
        );
        bar.set_margin(0, 0, gap, gap);
        bar
    }))?;
    chart.draw_series(data.iter().enumerate().filter_map(|(i, d)| {
        let (min, max) = d.spread?;
        Some(PathElement::new(
            vec![
                (SegmentValue::CenterOf(i as i32), scale(min)),
                (SegmentValue::CenterOf(i as i32), scale(max)),
            ],
            BLACK.stroke_width(2),
        ))
    }))?;
    let label =
        TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    chart.draw_series(data.iter().enumerate().map(|(i, d)| {
        Text::new(
            fmt(d.value),
            (
                SegmentValue::CenterOf(i as i32),
                scale(d.top()) + (top - bottom) * 0.02,
            ),
            label.clone(),
        )
    }))?;
    Ok(())
}

/// Tasks (left axis) and heap (right axis) over one run, with its phases as dashed lines:
/// publishing starts, last receipt, closing starts, closed.
pub fn timeline(area: &Area<'_>, caption: &str, t: &Timeline) -> Result<(), Error> {
    let ms = |us: u64| us as f64 / 1e3;
    let end = ms(t.closed_us.max(1)) * 1.02;
    let max_tasks = t.samples.iter().map(|s| s.tasks).max().unwrap_or(0).max(1) as f64 * 1.15;
    let mb = |b: usize| b as f64 / 1e6;
    let heap_lo = t
        .samples
        .iter()
        .map(|s| mb(s.heap_bytes))
        .fold(f64::MAX, f64::min);
    let heap_hi = t
        .samples
        .iter()
        .map(|s| mb(s.heap_bytes))
        .fold(0.0, f64::max);
    let (heap_lo, heap_hi) = if heap_lo > heap_hi {
        (0.0, 1.0)
    } else {
        let pad = ((heap_hi - heap_lo) * 0.15).max(0.05);
        ((heap_lo - pad).max(0.0), heap_hi + pad)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 13))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(45)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..max_tasks)?
        .set_secondary_coord(0.0..end, heap_lo..heap_hi);
    let x_fmt = |v: &f64| {
        if end >= 20.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    chart
        .configure_mesh()
        .x_desc("ms since start")
        .y_desc("tasks")
        .x_labels(8)
        .x_label_formatter(&x_fmt)
        .y_labels(5)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 11))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("heap MB")
        .y_labels(5)
        .label_style(("sans-serif", 11))
        .draw()?;
    for at in [t.publishing_us, t.received_us, t.closing_us, t.closed_us] {
        chart.draw_series(DashedLineSeries::new(
            [(ms(at), 0.0), (ms(at), max_tasks)],
            4,
            4,
            GREY.stroke_width(1),
        ))?;
    }
    chart
        .draw_series(LineSeries::new(
            t.samples.iter().map(|s| (ms(s.at_us), s.tasks as f64)),
            BLUE.stroke_width(2),
        ))?
        .label("tasks")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(
            t.samples.iter().map(|s| (ms(s.at_us), mb(s.heap_bytes))),
            RED.stroke_width(2),
        ))?
        .label("heap MB")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(GREY)
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}

/// Two rates over time (`(seconds, first, second)`: published and handled a second), with
/// events as labelled dashed lines (`(seconds, label)`).
pub fn rates(
    area: &Area<'_>,
    caption: &str,
    points: &[(f64, f64, f64)],
    marks: &[(f64, &str)],
) -> Result<(), Error> {
    let end = points
        .iter()
        .map(|p| p.0)
        .chain(marks.iter().map(|m| m.0))
        .fold(1.0, f64::max)
        * 1.02;
    let top = points.iter().map(|p| p.1.max(p.2)).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 13))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..end, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("s since the load started")
        .y_desc("messages/s")
        .x_labels(10)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_labels(6)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 11))
        .light_line_style(RGBColor(0xee, 0xee, 0xee))
        .draw()?;
    let label =
        TextStyle::from(("sans-serif", 11).into_font()).pos(Pos::new(HPos::Left, VPos::Top));
    for &(at, text) in marks {
        chart.draw_series(DashedLineSeries::new(
            [(at, 0.0), (at, top)],
            4,
            4,
            GREY.stroke_width(1),
        ))?;
        chart.draw_series([Text::new(
            text.to_owned(),
            (at + end * 0.005, top * 0.98),
            label.clone(),
        )])?;
    }
    for (name, colour, pick) in [
        (
            "published/s",
            BLUE,
            (|p: &(f64, f64, f64)| p.1) as fn(&(f64, f64, f64)) -> f64,
        ),
        ("handled/s", ORANGE, |p| p.2),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.0, pick(p))),
                colour.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(GREY)
        .label_font(("sans-serif", 11))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Sample;

    fn drawn(draw: impl FnOnce(&Area<'_>) -> Result<(), Error>) -> String {
        let svg = render((600, 400), draw).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        svg
    }

    #[test]
    fn bars_label_each_bar_with_its_value() {
        let data = [
            Bar::new("raw", 1_000.0),
            Bar::new("bus", 640.0).spread(600.0, 700.0).colour(ORANGE),
        ];
        for axis in [Axis::Linear, Axis::Log] {
            let svg = drawn(|root| bars(root, "msg/s", &data, axis, |v| format!("{v:.0}/s")));
            for text in ["msg/s", "raw", "bus", "1000/s", "640/s"] {
                assert!(svg.contains(text), "{axis:?}: no {text:?}");
            }
        }
        // Nothing to draw, or nothing above zero, still draws.
        drawn(|root| bars(root, "empty", &[], Axis::Linear, |v| format!("{v}")));
        drawn(|root| {
            bars(root, "zeros", &[Bar::new("0", 0.0)], Axis::Log, |v| {
                format!("{v}")
            })
        });
    }

    #[test]
    fn timeline_draws_samples_and_phases() {
        let t = Timeline {
            samples: (0..10)
                .map(|i| Sample {
                    at_us: i * 1_000,
                    tasks: i as usize,
                    threads: 3,
                    heap_bytes: 1_000_000 + i as usize * 10_000,
                })
                .collect(),
            publishing_us: 1_000,
            received_us: 7_000,
            closing_us: 8_000,
            closed_us: 9_000,
        };
        let svg = drawn(|root| timeline(root, "a run", &t));
        for text in ["a run", "ms since start", "heap MB", "tasks"] {
            assert!(svg.contains(text), "no {text:?}");
        }
        drawn(|root| timeline(root, "no samples", &Timeline::default()));
    }

    #[test]
    fn rates_draw_both_series_and_the_marks() {
        let points: Vec<_> = (0..20).map(|i| (i as f64 * 0.25, 500.0, 480.0)).collect();
        let svg = drawn(|root| {
            rates(
                root,
                "a cluster",
                &points,
                &[(1.0, "kill"), (3.0, "restart")],
            )
        });
        for text in ["a cluster", "published/s", "handled/s", "kill", "restart"] {
            assert!(svg.contains(text), "no {text:?}");
        }
        drawn(|root| rates(root, "nothing", &[], &[]));
    }
}
