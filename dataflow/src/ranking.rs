//! Listing order, competition ranks and standings (design §3), as plain functions.
//!
//! These are the single definition of ranking used by the sequential reference, by sinks that
//! answer standing queries from a day's totals, and by tests.

use serde::{Deserialize, Serialize};

use crate::event::User;

/// One row of a day's top-k: position in listing order (1-based), competition rank, user, total.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopRow {
    /// 1-based position in listing order (unique within a day's top-k).
    pub position: u32,
    /// Competition rank: 1 + the number of users with a strictly greater total.
    pub rank: u32,
    /// The user.
    pub user: User,
    /// The user's total steps that day.
    pub steps: u64,
}

/// The key that sorts users in listing order: total descending, then UUID ascending.
#[inline]
pub fn listing_key(user: User, steps: u64) -> (std::cmp::Reverse<u64>, User) {
    (std::cmp::Reverse(steps), user)
}

/// Sorts `(user, total)` pairs into listing order.
pub fn sort_listing(totals: &mut [(User, u64)]) {
    totals.sort_unstable_by_key(|&(u, s)| listing_key(u, s));
}

/// Assigns positions and competition ranks to the first `k` entries of a listing.
///
/// `listing` must be in listing order; because every user with a strictly greater total comes
/// earlier in that order, ranks computed within the prefix are the ranks among all users.
pub fn rank_prefix(listing: impl IntoIterator<Item = (User, u64)>, k: usize) -> Vec<TopRow> {
    let mut rows: Vec<TopRow> = Vec::with_capacity(k.min(1024));
    for (i, (user, steps)) in listing.into_iter().take(k).enumerate() {
        let rank = match rows.last() {
            Some(prev) if prev.steps == steps => prev.rank,
            _ => i as u32 + 1,
        };
        rows.push(TopRow {
            position: i as u32 + 1,
            rank,
            user,
            steps,
        });
    }
    rows
}

/// A user's standing on a day (design §3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The user.
    pub user: User,
    /// Competition rank.
    pub rank: u64,
    /// The user's total.
    pub steps: u64,
    /// Number of ranked users that day.
    pub users: u64,
    /// Smallest total strictly above theirs, minus theirs; `None` at rank 1.
    pub gap_up: Option<u64>,
    /// Theirs minus the largest total strictly below; `None` for the last.
    pub gap_down: Option<u64>,
    /// Up to `n` users just above, in listing order (nearest last), as `(user, total, rank)`.
    pub above: Vec<(User, u64, u64)>,
    /// Up to `n` users just below, in listing order (nearest first), as `(user, total, rank)`.
    pub below: Vec<(User, u64, u64)>,
}

/// Computes `user`'s standing from a whole day's listing (in listing order), with `n` neighbours
/// on each side. `None` when the user has no total that day.
pub fn standing(listing: &[(User, u64)], user: User, n: usize) -> Option<Standing> {
    let index = listing.iter().position(|&(u, _)| u == user)?;
    let steps = listing[index].1;
    // Ranks of every entry, computed once over the listing's prefix up to the neighbours needed.
    let rank_at =
        |i: usize| -> u64 { listing.partition_point(|&(_, s)| s > listing[i].1) as u64 + 1 };
    let gap_up = listing[..index]
        .iter()
        .rev()
        .find(|&&(_, s)| s > steps)
        .map(|&(_, s)| s - steps);
    let gap_down = listing[index + 1..]
        .iter()
        .find(|&&(_, s)| s < steps)
        .map(|&(_, s)| steps - s);
    let lo = index.saturating_sub(n);
    let hi = (index + 1 + n).min(listing.len());
    Some(Standing {
        user,
        rank: rank_at(index),
        steps,
        users: listing.len() as u64,
        gap_up,
        gap_down,
        above: (lo..index)
            .map(|i| (listing[i].0, listing[i].1, rank_at(i)))
            .collect(),
        below: (index + 1..hi)
            .map(|i| (listing[i].0, listing[i].1, rank_at(i)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn competition_ranks() {
        let mut l = vec![(4, 70), (2, 80), (1, 90), (3, 80)];
        sort_listing(&mut l);
        let rows = rank_prefix(l.iter().copied(), 10);
        let ranks: Vec<_> = rows.iter().map(|r| (r.user, r.rank, r.position)).collect();
        assert_eq!(ranks, vec![(1, 1, 1), (2, 2, 2), (3, 2, 3), (4, 4, 4)]);
        assert_eq!(rank_prefix(l.iter().copied(), 2).len(), 2);
    }

    #[test]
    fn standings() {
        let mut l = vec![(4, 70), (2, 80), (1, 90), (3, 80)];
        sort_listing(&mut l);
        let s = standing(&l, 3, 1).unwrap();
        assert_eq!((s.rank, s.steps, s.users), (2, 80, 4));
        assert_eq!((s.gap_up, s.gap_down), (Some(10), Some(10)));
        assert_eq!(s.above, vec![(2, 80, 2)]);
        assert_eq!(s.below, vec![(4, 70, 4)]);
        let top = standing(&l, 1, 0).unwrap();
        assert_eq!((top.rank, top.gap_up, top.gap_down), (1, None, Some(10)));
        let last = standing(&l, 4, 5).unwrap();
        assert_eq!((last.rank, last.gap_down, last.above.len()), (4, None, 3));
        assert!(standing(&l, 9, 1).is_none());
    }
}
