//! The latency plot: client round-trip percentile distributions, contender against
//! contender, as hand-written SVG (no plotting dependency).

use serde_json::Value;
use tunpipe_testkit::report::results_dir;

/// Plots the matrix cells' round-trip distributions, one SVG per payload size, one panel
/// per window.
pub fn plot(cells: &[Value]) {
    let mut panels = Vec::new();
    for payload in [64u64, 1400] {
        for window in [1u64, 32, 256] {
            let curves = cells
                .iter()
                .filter(|c| c["payload"] == payload && c["window"] == window)
                .filter_map(|c| {
                    let name = c["contender"].as_str()?.to_string();
                    let points = c["rtt_distribution"]
                        .as_array()?
                        .iter()
                        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                        .collect::<Vec<_>>();
                    Some((name, points))
                })
                .collect::<Vec<_>>();
            if !curves.is_empty() {
                panels.push(Panel {
                    title: format!("{payload} B payload, window {window}"),
                    curves,
                });
            }
        }
    }
    let dir = results_dir();
    for (i, chunk) in panels.chunks(3).enumerate() {
        let payload = if i == 0 { 64 } else { 1400 };
        write_latency_svg(
            &dir.join(format!("latency-{payload}B.svg")),
            &format!(
                "Client round trip through a real TUN (reflect), {payload} B UDP payload: contender against contender"
            ),
            chunk,
        );
    }
}

/// One panel of the latency plot: a title and one percentile curve per contender.
pub struct Panel {
    pub title: String,
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
}

const COLORS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
];

/// Writes panels side by side as one SVG: x is the percentile on a "nines" scale, y the
/// round-trip time in µs on a log scale. Hand-written SVG keeps the benches free of a
/// plotting dependency.
pub fn write_latency_svg(path: &std::path::Path, heading: &str, panels: &[Panel]) {
    let (pw, ph, ml, mt, mb, mr) = (420.0, 330.0, 60.0, 50.0, 50.0, 30.0);
    let width = panels.len() as f64 * (pw + ml + mr) + 10.0;
    let height = ph + mt + mb + 60.0;
    let (mut ymin, mut ymax, mut xmax) = (f64::MAX, 0f64, 1f64);
    for p in panels {
        for (_, c) in &p.curves {
            for &(x, y) in c {
                ymin = ymin.min(y.max(0.1));
                ymax = ymax.max(y);
                xmax = xmax.max(x);
            }
        }
    }
    if ymax <= 0.0 {
        return;
    }
    let lo = ymin.log10().floor();
    let hi = ymax.log10().ceil().max(lo + 1.0);
    let xmax = xmax.ceil().min(5.0);
    let mut s = String::new();
    s.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    ));
    s.push_str(&format!(
        "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{heading}</text>\n"
    ));
    for (i, panel) in panels.iter().enumerate() {
        let ox = 10.0 + i as f64 * (pw + ml + mr) + ml;
        let oy = mt;
        let px = |x: f64| ox + x / xmax * pw;
        let py = |y: f64| oy + ph - (y.max(0.1).log10() - lo) / (hi - lo) * ph;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\n",
            ox + pw / 2.0,
            oy - 8.0,
            panel.title
        ));
        s.push_str(&format!(
            "<rect x=\"{ox:.1}\" y=\"{oy:.1}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n"
        ));
        let mut decade = lo;
        while decade <= hi + 1e-9 {
            for m in [1.0, 2.0, 5.0] {
                let v = 10f64.powf(decade) * m;
                if v.log10() > hi + 1e-9 {
                    continue;
                }
                let y = py(v);
                s.push_str(&format!(
                    "<line x1=\"{ox:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                    ox + pw,
                    ox - 4.0,
                    y + 4.0,
                    if v >= 1.0 { format!("{v:.0}") } else { format!("{v}") }
                ));
            }
            decade += 1.0;
        }
        for n in 0..=(xmax as u32) {
            let x = px(f64::from(n));
            let label = match n {
                0 => "p0".to_string(),
                1 => "p90".to_string(),
                2 => "p99".to_string(),
                n => format!("p99.{}", "9".repeat(n as usize - 2)),
            };
            s.push_str(&format!(
                "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{oy:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
                oy + ph,
                oy + ph + 16.0
            ));
        }
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n\
             <text transform=\"translate({:.1},{:.1}) rotate(-90)\" text-anchor=\"middle\">round trip, µs (log)</text>\n",
            ox + pw / 2.0,
            oy + ph + 34.0,
            ox - 42.0,
            oy + ph / 2.0
        ));
        for (j, (label, curve)) in panel.curves.iter().enumerate() {
            let color = COLORS[j % COLORS.len()];
            let points: Vec<String> = curve
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            s.push_str(&format!(
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
                points.join(" ")
            ));
            let ly = oy + ph + 50.0 + (j / 3) as f64 * 16.0;
            let lx = ox + (j % 3) as f64 * 140.0;
            s.push_str(&format!(
                "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n\
                 <text x=\"{:.1}\" y=\"{ly:.1}\">{label}</text>\n",
                lx + 18.0,
                ly - 4.0,
                ly - 4.0,
                lx + 22.0
            ));
        }
    }
    s.push_str("</svg>\n");
    match std::fs::write(path, s) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
