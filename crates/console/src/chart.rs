//! The overview's chart: a workspace's deliveries of the last 24 hours, one
//! stacked bar per hour by outcome, drawn here as SVG. Only numbers and
//! fixed class names go into it (colours come from the stylesheet), so it
//! is embedded as is; the same figures are also given as a table.

use std::fmt::Write;

use chrono::{DateTime, Duration, DurationRound, Utc};
use courier_model::DeliveryStatus;

pub(crate) const HOURS: usize = 24;
const WIDTH: u32 = 720;
const HEIGHT: u32 = 160;
const BAR_GAP: u32 = 4;

/// One hour's deliveries by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Hour {
    pub start: DateTime<Utc>,
    pub succeeded: u64,
    /// Pending or retrying: not settled yet.
    pub open: u64,
    pub dead: u64,
    pub canceled: u64,
}

impl Hour {
    pub(crate) fn total(&self) -> u64 {
        self.succeeded + self.open + self.dead + self.canceled
    }

    pub(crate) fn label(&self) -> String {
        self.start.format("%H:00").to_string()
    }
}

/// The 24 hours ending with the current one, oldest first, filled from
/// `(hour start, status, count)` rows; hours without rows are zero.
pub(crate) fn hours(
    rows: &[(DateTime<Utc>, DeliveryStatus, u64)],
    now: DateTime<Utc>,
) -> Vec<Hour> {
    let current = now.duration_trunc(Duration::hours(1)).unwrap_or(now);
    let mut hours: Vec<Hour> = (0..HOURS)
        .map(|i| Hour {
            start: current - Duration::hours((HOURS - 1 - i) as i64),
            ..Hour::default()
        })
        .collect();
    for (start, status, count) in rows {
        let Some(hour) = hours.iter_mut().find(|h| h.start == *start) else {
            continue;
        };
        match status {
            DeliveryStatus::Succeeded => hour.succeeded += count,
            // Paused deliveries wait for their webhook: still open.
            DeliveryStatus::Pending | DeliveryStatus::Retrying | DeliveryStatus::Paused => {
                hour.open += count
            }
            DeliveryStatus::Dead => hour.dead += count,
            DeliveryStatus::Canceled => hour.canceled += count,
        }
    }
    hours
}

/// The bars as an `<svg>` element.
pub(crate) fn svg(hours: &[Hour]) -> String {
    let peak = hours.iter().map(Hour::total).max().unwrap_or(0).max(1);
    let slot = WIDTH / hours.len().max(1) as u32;
    let bar = slot.saturating_sub(BAR_GAP).max(1);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {}" role="img" aria-labelledby="chart-title"><title id="chart-title">Deliveries per hour, last 24 hours</title>"#,
        HEIGHT + 20
    );
    for (i, hour) in hours.iter().enumerate() {
        let x = i as u32 * slot;
        let mut top = HEIGHT;
        for (class, count) in [
            ("succeeded", hour.succeeded),
            ("open", hour.open),
            ("dead", hour.dead),
            ("canceled", hour.canceled),
        ] {
            if count == 0 {
                continue;
            }
            // At least one pixel, so a single failure is visible.
            let h = ((count * u64::from(HEIGHT)) / peak).max(1) as u32;
            top = top.saturating_sub(h);
            let _ = write!(
                out,
                r#"<rect class="{class}" x="{x}" y="{top}" width="{bar}" height="{h}"><title>{} UTC: {count} {class}</title></rect>"#,
                hour.label()
            );
        }
        if i % 3 == 0 {
            let _ = write!(
                out,
                r#"<text x="{x}" y="{}">{}</text>"#,
                HEIGHT + 15,
                hour.label()
            );
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn rows_land_in_their_hour_and_old_ones_are_left_out() {
        let now = Utc.with_ymd_and_hms(2026, 12, 2, 10, 30, 0).unwrap();
        let ten = Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap();
        let nine = Utc.with_ymd_and_hms(2026, 12, 2, 9, 0, 0).unwrap();
        let yesterday = Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0).unwrap();
        let rows = [
            (ten, DeliveryStatus::Succeeded, 5),
            (ten, DeliveryStatus::Retrying, 2),
            (ten, DeliveryStatus::Pending, 1),
            (nine, DeliveryStatus::Dead, 3),
            (yesterday, DeliveryStatus::Succeeded, 100),
        ];
        let hours = hours(&rows, now);
        assert_eq!(hours.len(), HOURS);
        assert_eq!(
            hours[0].start,
            Utc.with_ymd_and_hms(2026, 12, 1, 11, 0, 0).unwrap()
        );
        let last = &hours[HOURS - 1];
        assert_eq!((last.succeeded, last.open, last.dead), (5, 3, 0));
        assert_eq!(hours[HOURS - 2].dead, 3);
        assert_eq!(hours.iter().map(Hour::total).sum::<u64>(), 11);
    }

    #[test]
    fn bars_scale_to_the_busiest_hour() {
        let now = Utc::now();
        let mut hours = hours(&[], now);
        hours[0].succeeded = 10;
        hours[1].dead = 1;
        let svg = svg(&hours);
        assert!(
            svg.contains(&format!(
                r#"class="succeeded" x="0" y="0" width="26" height="{HEIGHT}""#
            )),
            "{svg}"
        );
        // One failure among ten successes still shows.
        assert!(
            svg.contains(r#"class="dead" x="30" y="144" width="26" height="16""#),
            "{svg}"
        );
        assert_eq!(svg.matches("<rect").count(), 2);
    }
}
