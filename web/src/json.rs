//! The JSON documents of the API. `top` and `standing` are exactly what `rankmysteps top --json`
//! and `rankmysteps standing --json` print (the CLI builds them here too).

use rankmysteps_dataflow::event::{format_day, format_user, Day, User};
use rankmysteps_dataflow::ranking::Standing;
use serde_json::{json, Value};

/// Bars of the histogram chart: at most this many bins.
pub const BINS: u64 = 40;

/// The standing document of `user` on `day`: `day`, `final`, `user`, `rank`, `steps` (and
/// `total`, the same), `users`, `gap_up` / `gap_down` (absent at the top / bottom), and the
/// neighbours `above` (listing order, nearest last) and `below` (nearest first), each
/// `{"rank", "user", "steps"}`.
pub fn standing_json(day: Day, user: User, s: &Standing, is_final: bool) -> Value {
    let neighbour = |(u, steps, rank): &(u128, u64, u64)| json!({"rank": rank, "user": format_user(*u), "steps": steps});
    let mut v = json!({
        "day": format_day(day),
        "final": is_final,
        "user": format_user(user),
        "rank": s.rank,
        "steps": s.steps,
        "total": s.steps,
        "users": s.users,
        "above": s.above.iter().map(neighbour).collect::<Vec<_>>(),
        "below": s.below.iter().map(neighbour).collect::<Vec<_>>(),
    });
    if let Some(g) = s.gap_up {
        v["gap_up"] = g.into();
    }
    if let Some(g) = s.gap_down {
        v["gap_down"] = g.into();
    }
    v
}

/// One bar of the chart: the users whose total is in `lo..=hi`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Bin {
    /// Smallest total of the bin.
    pub lo: u64,
    /// Largest total of the bin (inclusive).
    pub hi: u64,
    /// Users with a total in the bin.
    pub users: u64,
}

/// Bins a histogram (`(total, users)` rows, any order) into at most [`BINS`] bins of equal
/// width from 0 to the largest total; every row falls in exactly one bin, so the bins' users
/// add up to the rows' users. Empty for an empty histogram.
pub fn bins(rows: &[(u64, u64)]) -> Vec<Bin> {
    let Some(max) = rows.iter().map(|&(t, _)| t).max() else {
        return Vec::new();
    };
    let span = max.saturating_add(1);
    let width = span.div_ceil(BINS).max(1);
    let count = span.div_ceil(width);
    let mut bins: Vec<Bin> = (0..count)
        .map(|i| Bin {
            lo: i * width,
            hi: (i * width).saturating_add(width - 1).min(max),
            users: 0,
        })
        .collect();
    for &(total, users) in rows {
        bins[(total / width) as usize].users += users;
    }
    bins
}

/// The histogram document of `day`: `day`, `final`, `users` (the day's users, the sum of the
/// bins' users), `width` (of every bin) and `bins`.
pub fn histogram_json(day: Day, is_final: bool, rows: &[(u64, u64)]) -> Value {
    let bins = bins(rows);
    let users: u64 = rows.iter().map(|&(_, n)| n).sum();
    let width = bins.first().map_or(0, |b| b.hi - b.lo + 1);
    json!({
        "day": format_day(day),
        "final": is_final,
        "users": users,
        "width": width,
        "bins": bins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_total_once() {
        assert!(bins(&[]).is_empty());
        assert_eq!(
            bins(&[(0, 3)]),
            vec![Bin {
                lo: 0,
                hi: 0,
                users: 3
            }]
        );
        let rows: Vec<(u64, u64)> = (0..1000u64).map(|t| (t * 7 + 3, t % 5 + 1)).collect();
        let b = bins(&rows);
        assert!(
            b.len() <= BINS as usize && b.len() >= BINS as usize - 1,
            "{}",
            b.len()
        );
        assert_eq!(
            b.iter().map(|b| b.users).sum::<u64>(),
            rows.iter().map(|r| r.1).sum::<u64>()
        );
        assert_eq!(b[0].lo, 0);
        assert_eq!(b.last().unwrap().hi, 999 * 7 + 3);
        for w in b.windows(2) {
            assert_eq!(w[0].hi + 1, w[1].lo);
        }
        // Few distinct totals: one bin per total up to the largest.
        let b = bins(&[(2, 1), (5, 2)]);
        assert_eq!(b.len(), 6);
        assert_eq!((b[2].users, b[5].users), (1, 2));
    }
}
