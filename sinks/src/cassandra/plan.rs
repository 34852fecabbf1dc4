//! Planning: the writes that apply one epoch's deltas to the tables (pure, no I/O).
//!
//! Every delta is of an absolute record: `+1` upserts it, `-1` deletes it unless the same key
//! gets a `+1` in the same epoch (then the upsert alone replaces the old value). The keys:
//! `totals_by_user` (user, day); `users_by_total` (day, total, user), whose key holds the total,
//! so a change of total is a delete of the old row and an insert of the new one;
//! `top_by_day` (day, position); `histogram_by_day` (day, total); `days` (day).

use std::collections::BTreeSet;

use rankmysteps_dataflow::event::{Day, User};
use rankmysteps_dataflow::output::EpochOutput;
use rankmysteps_dataflow::ranking::TopRow;
use rustc_hash::FxHashSet;

use super::codec::to_bigint;
use crate::SinkError;

/// One idempotent write of absolute values (totals and counts already encoded as `bigint`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Write {
    /// `totals_by_user[user, day] = steps`.
    TotalUpsert {
        /// The user.
        user: User,
        /// The day.
        day: Day,
        /// Their total.
        steps: i64,
    },
    /// Delete `totals_by_user[user, day]`.
    TotalDelete {
        /// The user.
        user: User,
        /// The day.
        day: Day,
    },
    /// Insert the `users_by_total` row `(day, steps, user)`.
    ListingInsert {
        /// The day.
        day: Day,
        /// The user's total.
        steps: i64,
        /// The user.
        user: User,
    },
    /// Delete the `users_by_total` row `(day, steps, user)`.
    ListingDelete {
        /// The day.
        day: Day,
        /// The user's old total.
        steps: i64,
        /// The user.
        user: User,
    },
    /// `top_by_day[day, row.position] = (row.rank, row.user, row.steps)`.
    TopUpsert {
        /// The day.
        day: Day,
        /// The row.
        row: TopRow,
    },
    /// Delete `top_by_day[day, position]`.
    TopDelete {
        /// The day.
        day: Day,
        /// The position (1-based).
        position: u32,
    },
    /// `histogram_by_day[day, steps] = users`.
    HistogramUpsert {
        /// The day.
        day: Day,
        /// A total.
        steps: i64,
        /// How many users have exactly that total.
        users: i64,
    },
    /// Delete `histogram_by_day[day, steps]`.
    HistogramDelete {
        /// The day.
        day: Day,
        /// A total no user has any more.
        steps: i64,
    },
    /// `days[day].users = users`.
    DayUsers {
        /// The day.
        day: Day,
        /// The number of ranked users.
        users: i64,
    },
    /// Clear `days[day].users`.
    DayUsersDelete {
        /// The day.
        day: Day,
    },
}

/// A day changed (or closed) by the epoch: `days[day].epoch` and `.final` are set after every
/// data write of the epoch, so a reader seeing `final = true` sees the day's final data.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DayMark {
    /// The day.
    pub day: Day,
    /// Whether the day closed in this epoch.
    pub is_final: bool,
}

/// The writes of one epoch, in the order they must become durable: all of `data` (in any
/// order, concurrently), then all of `marks`, then the progress record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Upserts and deletes of the data tables.
    pub data: Vec<Write>,
    /// The days to mark.
    pub marks: Vec<DayMark>,
}

/// The keys (of type `K`) that get a `+1` among `deltas`.
fn inserted<T, K: Ord>(deltas: &[(T, isize)], key: impl Fn(&T) -> K) -> BTreeSet<K> {
    deltas
        .iter()
        .filter(|(_, diff)| *diff > 0)
        .map(|(record, _)| key(record))
        .collect()
}

/// Plans the writes of `output`.
pub fn plan(output: &EpochOutput) -> Result<Plan, SinkError> {
    let mut data = Vec::with_capacity(output.totals.len() * 2 + output.top.len());

    // Totals: the dataflow emits a change as the old total's retraction immediately followed
    // by the new one's insertion, so a retraction is a delete of the user's total only when the
    // next delta is not the insertion for the same (day, user). Whatever the order, the set of
    // inserted keys (built only if some retraction is not so followed) decides.
    let totals = &output.totals;
    let followed = |i: usize| {
        let ((day, user, _), _) = totals[i];
        totals
            .get(i + 1)
            .is_some_and(|&((d, u, _), diff)| d == day && u == user && diff > 0)
    };
    let unpaired: Vec<usize> = (0..totals.len())
        .filter(|&i| totals[i].1 < 0 && !followed(i))
        .collect();
    let inserted_totals: FxHashSet<(Day, User)> = if unpaired.is_empty() {
        FxHashSet::default()
    } else {
        totals
            .iter()
            .filter(|(_, diff)| *diff > 0)
            .map(|&((day, user, _), _)| (day, user))
            .collect()
    };
    let mut unpaired = unpaired.into_iter().peekable();
    for (i, &((day, user, total), diff)) in totals.iter().enumerate() {
        let steps = to_bigint(total)?;
        if diff > 0 {
            data.push(Write::TotalUpsert { user, day, steps });
            data.push(Write::ListingInsert { day, steps, user });
        } else if diff < 0 {
            // The listing row's key holds the total: the old row always goes.
            data.push(Write::ListingDelete { day, steps, user });
            if unpaired.next_if_eq(&i).is_some() && !inserted_totals.contains(&(day, user)) {
                data.push(Write::TotalDelete { user, day });
            }
        }
    }

    let top_inserted = inserted(&output.top, |&(day, row)| (day, row.position));
    for &((day, row), diff) in &output.top {
        if diff > 0 {
            data.push(Write::TopUpsert { day, row });
        } else if diff < 0 && !top_inserted.contains(&(day, row.position)) {
            data.push(Write::TopDelete {
                day,
                position: row.position,
            });
        }
    }

    let histogram_inserted = inserted(&output.histogram, |&(day, total, _)| (day, total));
    for &((day, total, users), diff) in &output.histogram {
        let steps = to_bigint(total)?;
        if diff > 0 {
            let users = to_bigint(users)?;
            data.push(Write::HistogramUpsert { day, steps, users });
        } else if diff < 0 && !histogram_inserted.contains(&(day, total)) {
            data.push(Write::HistogramDelete { day, steps });
        }
    }

    let users_inserted = inserted(&output.users, |&(day, _)| day);
    for &((day, users), diff) in &output.users {
        if diff > 0 {
            let users = to_bigint(users)?;
            data.push(Write::DayUsers { day, users });
        } else if diff < 0 && !users_inserted.contains(&day) {
            data.push(Write::DayUsersDelete { day });
        }
    }

    let marks = output
        .changed_days()
        .into_iter()
        .map(|day| DayMark {
            day,
            is_final: output.closed.contains(&day),
        })
        .collect();
    Ok(Plan { data, marks })
}
