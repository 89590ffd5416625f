//! Which recovery points a retention policy keeps: plan first, then act (prune shows the
//! plan before deleting anything).
//!
//! `--keep-within 24h --keep-hourly 7d --keep-daily 4w --keep-weekly 12w` keeps every point
//! of the last 24 hours, then the newest point of each hour for 7 days, of each day (UTC)
//! for 4 weeks, and of each ISO week for 12 weeks. A name's newest point is always kept,
//! and so is every point the caller marks protected (the parent of a live writer).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionPolicy {
    pub keep_within: Option<Duration>,
    pub keep_hourly: Option<Duration>,
    pub keep_daily: Option<Duration>,
    pub keep_weekly: Option<Duration>,
}

impl RetentionPolicy {
    pub fn is_empty(&self) -> bool {
        *self == RetentionPolicy::default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeepReason {
    Newest,
    Protected,
    Within,
    Hourly,
    Daily,
    Weekly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision<P> {
    pub point: P,
    pub time: DateTime<Utc>,
    /// Empty: the point is deleted.
    pub keep: Vec<KeepReason>,
}

/// Decides for the points of one name. `points` may be in any order; the result is newest
/// first.
pub fn plan<P: Clone + Eq + std::hash::Hash>(
    points: &[(P, DateTime<Utc>)],
    policy: &RetentionPolicy,
    protected: &HashSet<P>,
    now: DateTime<Utc>,
) -> Vec<Decision<P>> {
    let mut sorted: Vec<&(P, DateTime<Utc>)> = points.iter().collect();
    sorted.sort_by_key(|p| std::cmp::Reverse(p.1));
    let mut out: Vec<Decision<P>> = sorted
        .iter()
        .map(|(p, t)| Decision {
            point: p.clone(),
            time: *t,
            keep: Vec::new(),
        })
        .collect();
    if let Some(first) = out.first_mut() {
        first.keep.push(KeepReason::Newest);
    }
    for d in &mut out {
        if protected.contains(&d.point) {
            d.keep.push(KeepReason::Protected);
        }
        if policy.keep_within.is_some_and(|w| age(now, d.time) <= w) {
            d.keep.push(KeepReason::Within);
        }
    }
    bucketed(&mut out, policy.keep_hourly, now, KeepReason::Hourly, |t| {
        (t.date_naive().num_days_from_ce() as i64) * 24 + t.hour() as i64
    });
    bucketed(&mut out, policy.keep_daily, now, KeepReason::Daily, |t| {
        t.date_naive().num_days_from_ce() as i64
    });
    bucketed(&mut out, policy.keep_weekly, now, KeepReason::Weekly, |t| {
        let w = t.iso_week();
        w.year() as i64 * 100 + w.week() as i64
    });
    out
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> Duration {
    (now - t).to_std().unwrap_or(Duration::ZERO)
}

/// Within `span` of `now`, keeps the newest point of each bucket. `out` is newest first,
/// so the first point seen in a bucket is its newest.
fn bucketed<P>(
    out: &mut [Decision<P>],
    span: Option<Duration>,
    now: DateTime<Utc>,
    reason: KeepReason,
    bucket: impl Fn(&DateTime<Utc>) -> i64,
) {
    let Some(span) = span else { return };
    let mut seen = BTreeMap::new();
    for d in out.iter_mut().filter(|d| age(now, d.time) <= span) {
        if seen.insert(bucket(&d.time), ()).is_none() {
            d.keep.push(reason);
        }
    }
}

/// Parses `90s`, `30m`, `24h`, `7d`, `4w`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 24h, 7d or 4w"))?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "{text:?}: unit {unit:?} is not one of s, m, h, d, w"
            ))
        }
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(day: u32, hour: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, min, 0).unwrap()
    }

    fn kept(d: &[Decision<u32>]) -> Vec<u32> {
        let mut v: Vec<u32> = d
            .iter()
            .filter(|d| !d.keep.is_empty())
            .map(|d| d.point)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(
            parse_duration("4w").unwrap(),
            Duration::from_secs(28 * 86_400)
        );
        for bad in ["", "24", "h", "7y", "-1d", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn newest_is_always_kept_even_with_no_policy() {
        let points = [(1, at(1, 0, 0)), (2, at(2, 0, 0))];
        let d = plan(
            &points,
            &RetentionPolicy::default(),
            &HashSet::new(),
            at(26, 0, 0),
        );
        assert_eq!(kept(&d), vec![2]);
        assert_eq!(d[0].keep, vec![KeepReason::Newest]);
    }

    #[test]
    fn within_hourly_daily_buckets() {
        let now = at(26, 12, 0);
        let points = [
            (1, at(26, 11, 50)), // within 1h
            (2, at(26, 11, 10)), // within 1h
            (3, at(26, 9, 40)),  // hour 9: newest of its hour
            (4, at(26, 9, 5)),   // hour 9: older, dropped
            (5, at(24, 23, 0)),  // day 24: newest of its day
            (6, at(24, 1, 0)),   // day 24: dropped
            (7, at(1, 0, 0)),    // beyond every span: dropped
        ];
        let policy = RetentionPolicy {
            keep_within: Some(Duration::from_secs(3600)),
            keep_hourly: Some(Duration::from_secs(6 * 3600)),
            keep_daily: Some(Duration::from_secs(7 * 86_400)),
            keep_weekly: None,
        };
        let protected: HashSet<u32> = [7].into();
        let d = plan(&points, &policy, &protected, now);
        assert_eq!(kept(&d), vec![1, 2, 3, 5, 7]);
        let p7 = d.iter().find(|d| d.point == 7).unwrap();
        assert_eq!(p7.keep, vec![KeepReason::Protected]);
    }
}
