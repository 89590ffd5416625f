//! The RPO chart of a VM's detail page: the last 24 hours as inline SVG, no script.
//!
//! RPO at time t is t minus the cut time of the newest point cut by then: it climbs
//! while no point is taken and drops at each new cut. The window is cut into buckets and
//! each shows the worst RPO inside it, so a short peak is never averaged away.

use chrono::{DateTime, Duration, Utc};
use maud::{html, Markup};

use super::layout::age;

/// Buckets across the window: 288 of 5 minutes for 24 hours.
pub const BUCKETS: usize = 288;

/// The worst RPO (seconds) in each of `n` equal buckets of `[start, end)`; None where no
/// point existed yet. `cuts` ascending; it may start before `start`.
pub fn worst_rpo_per_bucket(
    cuts: &[DateTime<Utc>],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    n: usize,
) -> Vec<Option<f64>> {
    let span = (end - start).num_milliseconds().max(1) as f64 / 1000.0;
    let width = span / n as f64;
    let secs = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds() as f64 / 1000.0;
    let mut out = Vec::with_capacity(n);
    // Index of the first cut not yet passed, and the newest cut passed.
    let mut next = 0;
    let mut last: Option<DateTime<Utc>> = None;
    for i in 0..n {
        let b_end = start + Duration::milliseconds(((i + 1) as f64 * width * 1000.0) as i64);
        let mut worst: Option<f64> = None;
        while next < cuts.len() && cuts[next] < b_end {
            let c = cuts[next];
            // Just before this cut, RPO had climbed to c - previous cut: a peak.
            if let Some(prev) = last {
                if c >= start {
                    worst = Some(worst.unwrap_or(0.0).max(secs(prev, c)));
                }
            }
            last = Some(c);
            next += 1;
        }
        // And at the bucket's end, RPO is the age of the newest cut.
        if let Some(prev) = last {
            worst = Some(worst.unwrap_or(0.0).max(secs(prev, b_end)));
        }
        out.push(worst);
    }
    out
}

/// The chart: worst RPO per bucket as a line, the policy's threshold dashed.
pub fn rpo_chart(
    cuts: &[DateTime<Utc>],
    now: DateTime<Utc>,
    threshold_secs: u64,
    vm: &str,
) -> Markup {
    let start = now - Duration::hours(24);
    let series = worst_rpo_per_bucket(cuts, start, now, BUCKETS);
    let worst = series.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    // Now: the age of the newest cut, not the last bucket's worst.
    let current = cuts
        .last()
        .map(|c| (now - *c).num_milliseconds() as f64 / 1000.0);
    let top = (threshold_secs as f64 * 1.25).max(worst * 1.1).max(10.0);
    let (w, h, left, bottom, pad) = (720.0, 220.0, 70.0, 30.0, 10.0);
    let plot_w = w - left - pad;
    let plot_h = h - bottom - pad;
    let x = |i: usize| left + plot_w * (i + 1) as f64 / BUCKETS as f64;
    let y = |v: f64| pad + plot_h * (1.0 - (v / top).min(1.0));
    // One path, broken where there was no point yet.
    let mut d = String::new();
    let mut pen_down = false;
    for (i, v) in series.iter().enumerate() {
        match v {
            Some(v) => {
                d += &format!(
                    "{}{:.1},{:.1} ",
                    if pen_down { "L" } else { "M" },
                    x(i),
                    y(*v)
                );
                pen_down = true;
            }
            None => pen_down = false,
        }
    }
    let summary = format!(
        "RPO of {vm} over the last 24 hours: worst {}, now {}, threshold {}.",
        if series.iter().any(Option::is_some) {
            age(Some(worst))
        } else {
            "no point yet".into()
        },
        age(current),
        age(Some(threshold_secs as f64))
    );
    let ty = y(threshold_secs as f64);
    html! {
        figure class="chart" {
            svg viewBox={ "0 0 " (w) " " (h) } role="img" aria-labelledby="rpo-title rpo-desc"
                xmlns="http://www.w3.org/2000/svg" {
                title id="rpo-title" { "RPO, last 24 hours" }
                desc id="rpo-desc" { (summary) }
                rect class="plot" x=(left) y=(pad) width=(plot_w) height=(plot_h) {}
                line class="threshold" x1=(left) x2=(left + plot_w) y1=(ty) y2=(ty) {}
                text class="label" x=(left - 6.0) y=(ty + 4.0) text-anchor="end" { (age(Some(threshold_secs as f64))) }
                text class="label" x=(left - 6.0) y=(pad + 10.0) text-anchor="end" { (age(Some(top))) }
                text class="label" x=(left - 6.0) y=(pad + plot_h) text-anchor="end" { "0" }
                @for (i, tick) in ["-24 h", "-18 h", "-12 h", "-6 h", "now"].iter().enumerate() {
                    text class="label" x=(left + plot_w * i as f64 / 4.0) y=(h - 8.0)
                        text-anchor=(if i == 0 { "start" } else if i == 4 { "end" } else { "middle" }) { (tick) }
                }
                path class="rpo" d=(d) {}
            }
            figcaption { (summary) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn each_bucket_shows_its_worst_rpo() {
        // Buckets of 100 s over [0, 400): cuts at -50, 30, 60, 250.
        let cuts = [t(-50), t(30), t(60), t(250)];
        let b = worst_rpo_per_bucket(&cuts, t(0), t(400), 4);
        // [0,100): peak 80 just before the cut at 30; at 100 the age is 40.
        assert_eq!(b[0], Some(80.0));
        // [100,200): no cut; at 200 the age is 140.
        assert_eq!(b[1], Some(140.0));
        // [200,300): peak 190 before the cut at 250; at 300 the age is 50.
        assert_eq!(b[2], Some(190.0));
        // [300,400): climbing again, 150 at its end.
        assert_eq!(b[3], Some(150.0));
    }

    #[test]
    fn no_rpo_before_the_first_point() {
        let b = worst_rpo_per_bucket(&[t(150)], t(0), t(400), 4);
        assert_eq!(b, vec![None, Some(50.0), Some(150.0), Some(250.0)]);
        assert!(worst_rpo_per_bucket(&[], t(0), t(400), 4)
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn the_chart_says_what_it_shows() {
        let now = t(86_400);
        let cuts: Vec<_> = (0..100).map(|i| t(86_400 - 3000 + i * 30)).collect();
        let svg = rpo_chart(&cuts, now, 30, "web").into_string();
        assert!(
            svg.contains("<svg") && svg.contains("role=\"img\""),
            "{svg}"
        );
        assert!(
            svg.contains("RPO of web over the last 24 hours: worst 30 s, now 30 s"),
            "{svg}"
        );
        assert!(svg.contains("class=\"rpo\" d=\"M"), "{svg}");
    }
}
