//! The SVG figures of `matrix`, written by hand: sender-cpu.svg (CPU per
//! broadcast against N, one line per mode, one panel per payload size) and
//! ratio.svg (kernel over each user-space mode against N, with the target),
//! each for one address family (its title says so, unless IPv4).

use std::fmt::Write as _;

use crate::bench::Family;
use crate::matrix::{PointSummary, TARGET_MIN_N, TARGET_RATIO};
use crate::spread::Spread;
use crate::MatrixArgs;

const COLORS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 340.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 50.0;

/// A panel's plotting area and its axes (x: log2 of N; y: log10 or linear).
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    log_y: bool,
}

impl Frame {
    fn x(&self, n: f64) -> f64 {
        let span = (self.x_max.log2() - self.x_min.log2()).max(1e-9);
        self.left + (n.log2() - self.x_min.log2()) / span * self.width
    }

    fn y(&self, v: f64) -> f64 {
        let (lo, hi, v) = if self.log_y {
            (self.y_min.log10(), self.y_max.log10(), v.max(1e-12).log10())
        } else {
            (self.y_min, self.y_max, v)
        };
        self.top + self.height - (v - lo) / (hi - lo).max(1e-12) * self.height
    }

    fn axes(&self, svg: &mut String, ns: &[usize], y_ticks: &[f64], title: &str, y_label: &str) {
        let (l, t, w, h) = (self.left, self.top, self.width, self.height);
        let _ = writeln!(
            svg,
            r##"<rect x="{l}" y="{t}" width="{w}" height="{h}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{title}</text>"##,
            l + w / 2.0,
            t - 14.0
        );
        for &n in ns {
            let x = self.x(n as f64);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{n}</text>"##,
                t + h,
                t + h + 16.0
            );
        }
        for &v in y_ticks {
            let y = self.y(v);
            let label = if v >= 10.0 || v == v.trunc() {
                format!("{v:.0}")
            } else {
                format!("{v}")
            };
            let _ = writeln!(
                svg,
                r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                l + w,
                l - 6.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">destinations N (log scale)</text>"##,
            l + w / 2.0,
            t + h + 36.0
        );
        let (yx, yy) = (l - 50.0, t + h / 2.0);
        let _ = writeln!(
            svg,
            r##"<text x="{yx}" y="{yy}" text-anchor="middle" transform="rotate(-90 {yx} {yy})">{y_label}</text>"##
        );
    }

    /// A line through the medians with min-max whiskers, shifted right by
    /// `dx` pixels (so that whiskers of series at the same N stay apart).
    fn series(
        &self,
        svg: &mut String,
        points: &[(usize, Spread)],
        color: &str,
        dashed: bool,
        dx: f64,
    ) {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points
            .iter()
            .map(|(n, s)| format!("{:.1},{:.1}", self.x(*n as f64) + dx, self.y(s.median)))
            .collect();
        let dash = if dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"##,
            path.join(" ")
        );
        for (n, s) in points {
            let x = self.x(*n as f64) + dx;
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}"/><circle cx="{x:.1}" cy="{:.1}" r="3" fill="{color}"/>"##,
                self.y(s.min),
                self.y(s.max),
                self.y(s.median)
            );
        }
    }
}

fn svg_open(width: f64, height: f64) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"##
    )
}

fn legend(svg: &mut String, x: f64, y: f64, entries: &[(&str, &str, bool)]) {
    for (i, (label, color, dashed)) in entries.iter().enumerate() {
        let yy = y + 18.0 * i as f64;
        let dash = if *dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{yy}" x2="{}" y2="{yy}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{label}</text>"##,
            x + 26.0,
            x + 32.0,
            yy + 4.0
        );
    }
}

/// Ticks 1, 2, 5 x 10^k inside [lo, hi].
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo * 0.999 && v <= hi * 1.001 {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn x_range(args: &MatrixArgs) -> (f64, f64) {
    let lo = args.ns.iter().copied().min().unwrap_or(1) as f64;
    let hi = args.ns.iter().copied().max().unwrap_or(2) as f64;
    if hi > lo {
        (lo / 1.25, hi * 1.25)
    } else {
        (lo / 2.0, lo * 2.0)
    }
}

/// What the titles add for `family`: nothing for IPv4 (the figures it had
/// before there was IPv6).
fn family_note(family: Family) -> String {
    match family {
        Family::V4 => String::new(),
        Family::V6 => format!(", {family}"),
    }
}

/// sender-cpu.svg: CPU per broadcast against N, one line per mode, one panel
/// per payload size, for the points of one `family`.
pub fn sender_cpu(summary: &[&PointSummary], args: &MatrixArgs, family: Family) -> String {
    let all: Vec<f64> = summary
        .iter()
        .flat_map(|p| p.cpu.iter().flatten().flat_map(|s| [s.min, s.max]))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0, f64::max);
    let (y_min, y_max) = if lo.is_finite() && hi > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    } else {
        (1.0, 10.0)
    };
    let (x_min, x_max) = x_range(args);
    let panels = args.sizes.len() as f64;
    let width = panels * (PANEL_W + MARGIN_L + MARGIN_R);
    let height = PANEL_H + MARGIN_T + MARGIN_B + 40.0;
    let mut svg = svg_open(width, height);
    for (k, &size) in args.sizes.iter().enumerate() {
        let frame = Frame {
            left: k as f64 * (PANEL_W + MARGIN_L + MARGIN_R) + MARGIN_L,
            top: MARGIN_T,
            width: PANEL_W,
            height: PANEL_H,
            x_min,
            x_max,
            y_min,
            y_max,
            log_y: true,
        };
        frame.axes(
            &mut svg,
            &args.ns,
            &log_ticks(y_min, y_max),
            &format!("{size} B payload{}", family_note(family)),
            "sender CPU per broadcast (µs, log scale)",
        );
        for (m, color) in COLORS.iter().enumerate() {
            let points: Vec<(usize, Spread)> = summary
                .iter()
                .filter(|p| p.size == size)
                .filter_map(|p| Some((p.n, p.cpu[m]?)))
                .collect();
            let dx = (m as f64 - 1.0) * 3.0;
            frame.series(&mut svg, &points, color, false, dx);
        }
        if k == 0 {
            legend(
                &mut svg,
                frame.left + 12.0,
                frame.top + 16.0,
                &[
                    ("kernel fan-out", COLORS[0], false),
                    ("sendmmsg", COLORS[1], false),
                    ("sendto loop", COLORS[2], false),
                ],
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">median of {} repeats, bars: min–max; user + system CPU of the sending process, receive side on another CPU, no loss</text>"##,
        width / 2.0,
        height - 10.0,
        args.repeats
    );
    svg.push_str("</svg>\n");
    svg
}

/// ratio.svg: kernel over each user-space mode against N, solid for the
/// first payload size, dashed for the second, and the 0.40 target, for the
/// points of one `family`.
pub fn ratio(summary: &[&PointSummary], args: &MatrixArgs, family: Family) -> String {
    let hi = summary
        .iter()
        .flat_map(|p| [p.kernel_over_sendto, p.kernel_over_sendmmsg])
        .flatten()
        .map(|s| s.max)
        .fold(1.0, f64::max);
    let y_max = (hi * 10.0).ceil() / 10.0;
    let (x_min, x_max) = x_range(args);
    let width = PANEL_W + MARGIN_L + MARGIN_R + 200.0;
    let height = PANEL_H + MARGIN_T + MARGIN_B + 20.0;
    let frame = Frame {
        left: MARGIN_L,
        top: MARGIN_T,
        width: PANEL_W,
        height: PANEL_H,
        x_min,
        x_max,
        y_min: 0.0,
        y_max,
        log_y: false,
    };
    let mut svg = svg_open(width, height);
    let ticks: Vec<f64> = (0..=(y_max * 10.0).round() as usize)
        .map(|i| i as f64 / 10.0)
        .collect();
    frame.axes(
        &mut svg,
        &args.ns,
        &ticks,
        &format!(
            "kernel fan-out CPU relative to user space{}",
            family_note(family)
        ),
        "ratio of sender CPU per broadcast",
    );
    let y = frame.y(TARGET_RATIO);
    let _ = writeln!(
        svg,
        r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#000" stroke-dasharray="2 3"/><text x="{}" y="{:.1}" text-anchor="end">target {TARGET_RATIO:.2}</text>"##,
        frame.x(TARGET_MIN_N as f64),
        frame.left + frame.width,
        frame.left + frame.width - 4.0,
        y - 4.0
    );
    let mut entries = Vec::new();
    let labels: Vec<String> = args
        .sizes
        .iter()
        .flat_map(|s| {
            [
                format!("kernel/sendto, {s} B"),
                format!("kernel/sendmmsg, {s} B"),
            ]
        })
        .collect();
    for (k, &size) in args.sizes.iter().enumerate() {
        let dashed = k % 2 == 1;
        let of = |f: fn(&&PointSummary) -> Option<Spread>| -> Vec<(usize, Spread)> {
            summary
                .iter()
                .filter(|p| p.size == size)
                .filter_map(|p| Some((p.n, f(p)?)))
                .collect()
        };
        let dx = (k as f64 - (args.sizes.len() as f64 - 1.0) / 2.0) * 6.0;
        frame.series(
            &mut svg,
            &of(|p| p.kernel_over_sendto),
            COLORS[2],
            dashed,
            dx,
        );
        frame.series(
            &mut svg,
            &of(|p| p.kernel_over_sendmmsg),
            COLORS[1],
            dashed,
            dx,
        );
        entries.push((labels[2 * k].as_str(), COLORS[2], dashed));
        entries.push((labels[2 * k + 1].as_str(), COLORS[1], dashed));
    }
    legend(
        &mut svg,
        frame.left + frame.width + 16.0,
        frame.top + 16.0,
        &entries,
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">per-repeat ratios of runs made back to back; median of {}, bars: min–max</text>"##,
        width / 2.0,
        height - 8.0,
        args.repeats
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_cover_the_range() {
        assert_eq!(
            log_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(log_ticks(10.0, 10.0), vec![10.0]);
    }
}
