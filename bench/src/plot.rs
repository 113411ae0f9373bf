//! Line charts as standalone SVG, written by hand (no plotting crate): axes,
//! ticks, a legend, lines with points, and horizontal reference lines.

use std::fmt::Write as _;

/// One line of the chart.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// CSS colour.
    pub color: &'static str,
    /// (x, y) points, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Dashed.
    pub dashed: bool,
}

/// A chart to render.
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (values must be positive).
    pub log_y: bool,
    /// Lines.
    pub series: Vec<Series>,
    /// Horizontal reference lines: label, colour, y.
    pub references: Vec<(String, &'static str, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Round tick values covering `[lo, hi]` on a linear axis.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 7.0)
        .unwrap_or(10.0 * mag);
    let mut ticks = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-6 {
        ticks.push(t);
        t += step;
    }
    ticks
}

fn label(v: f64) -> String {
    if v >= 10.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

impl Chart {
    /// The chart as an SVG document.
    pub fn to_svg(&self) -> String {
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|(_, y)| !self.log_y || *y > 0.0)
            .collect();
        let xs = all.iter().map(|p| p.0);
        let (x_lo, x_hi) = (
            xs.clone().fold(f64::INFINITY, f64::min).min(0.0),
            xs.fold(f64::NEG_INFINITY, f64::max),
        );
        let ys = all
            .iter()
            .map(|p| p.1)
            .chain(self.references.iter().map(|r| r.2));
        let (mut y_lo, mut y_hi) = (
            ys.clone().fold(f64::INFINITY, f64::min),
            ys.fold(f64::NEG_INFINITY, f64::max),
        );
        if !y_lo.is_finite() || !y_hi.is_finite() {
            (y_lo, y_hi) = (1.0, 10.0);
        }
        let x_hi = if x_hi.is_finite() && x_hi > x_lo {
            x_hi * 1.05
        } else {
            x_lo + 1.0
        };
        let (y_lo, y_hi) = if self.log_y {
            (
                10f64.powf(y_lo.max(1e-3).log10().floor()),
                10f64.powf(y_hi.max(1e-3).log10().ceil()),
            )
        } else {
            (0.0, y_hi.max(1e-9) * 1.1)
        };
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let sx = |x: f64| LEFT + (x - x_lo) / (x_hi - x_lo) * pw;
        let sy = |y: f64| {
            let f = if self.log_y {
                (y.max(y_lo).log10() - y_lo.log10()) / (y_hi.log10() - y_lo.log10()).max(1e-9)
            } else {
                (y - y_lo) / (y_hi - y_lo)
            };
            TOP + ph - f * ph
        };
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{H}" fill="white"/>
<text x="{}" y="22" font-size="15" font-weight="bold">{}</text>
"#,
            LEFT,
            escape(&self.title)
        );
        // Grid and ticks.
        for t in linear_ticks(x_lo, x_hi / 1.05) {
            let x = sx(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                label(t)
            );
        }
        let y_ticks: Vec<f64> = if self.log_y {
            let mut v = Vec::new();
            let mut t = y_lo;
            while t <= y_hi * 1.0001 {
                v.push(t);
                t *= 10.0;
            }
            v
        } else {
            linear_ticks(y_lo, y_hi)
        };
        for t in y_ticks {
            let y = sy(t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
            LEFT + pw / 2.0,
            H - 12.0,
            escape(&self.x_label),
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        let mut legend_y = TOP + 10.0;
        let legend_x = LEFT + pw + 16.0;
        for (name, color, y) in &self.references {
            let yy = sy(*y);
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{color}" stroke-width="1.5" stroke-dasharray="2 4"/>"#,
                LEFT + pw
            );
            let _ = writeln!(
                s,
                r#"<line x1="{legend_x}" y1="{legend_y}" x2="{:.1}" y2="{legend_y}" stroke="{color}" stroke-width="1.5" stroke-dasharray="2 4"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                legend_x + 22.0,
                legend_x + 28.0,
                legend_y + 4.0,
                escape(name)
            );
            legend_y += 18.0;
        }
        for series in &self.series {
            let pts: Vec<(f64, f64)> = series
                .points
                .iter()
                .filter(|(_, y)| !self.log_y || *y > 0.0)
                .map(|(x, y)| (sx(*x), sy(*y)))
                .collect();
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                path.join(" "),
                series.color
            );
            for (x, y) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"/>"#,
                    series.color
                );
            }
            let _ = writeln!(
                s,
                r#"<line x1="{legend_x}" y1="{legend_y}" x2="{:.1}" y2="{legend_y}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                legend_x + 22.0,
                series.color,
                legend_x + 28.0,
                legend_y + 4.0,
                escape(&series.name)
            );
            legend_y += 18.0;
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_renders_its_series_and_references() {
        let chart = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_y: true,
            series: vec![Series {
                name: "p99 <ms>".into(),
                color: "red",
                points: vec![(1.0, 2.0), (2.0, 30.0)],
                dashed: false,
            }],
            references: vec![("limit".into(), "gray", 15.0)],
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("p99 &lt;ms&gt;"));
        assert!(svg.contains("<polyline"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(linear_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
    }
}
