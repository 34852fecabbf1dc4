//! Generations and the write timestamps that fence older ones (design §4).
//!
//! Every start of a worker process claims a new generation of its `(job, process)` row in the
//! `generations` table, by a lightweight transaction (compare-and-set on that one row: a
//! lightweight transaction guards only its own partition, and Cassandra refuses
//! `USING TIMESTAMP` on conditional writes, so the results themselves cannot be conditional).
//! Fencing of the results then comes from the write timestamps: every write of generation g
//! for epoch e carries [`fence_timestamp`]`(g, e)`, which sorts above every write of an older
//! generation whatever its epoch, and above every wall-clock microsecond timestamp (what
//! earlier versions wrote). A process of an older generation that is still alive (a zombie
//! behind a network partition, a stop that did not finish) may still send writes, but they
//! lose against every value its successor writes, and its progress record never replaces
//! the successor's. Deletes of archive objects check the claimed generation first
//! ([`CassandraReader::check_generation`]).

use scylla::statement::{Consistency, SerialConsistency};

use super::read::CassandraReader;
use crate::SinkError;

/// Timestamps of generation writes start here: above every wall-clock microsecond timestamp
/// (2^60 µs is the year 38 500).
const FENCE_BASE: i64 = 1 << 60;
/// Bits of the epoch in a timestamp: epochs of 10 ms since 1970 fit until the year 2057.
const EPOCH_BITS: u32 = 38;
/// The most generations a job can take (2^60 + g·2^38 must stay below 2^63).
pub const MAX_GENERATION: u64 = (7 << (60 - EPOCH_BITS)) - 1;

/// The write timestamp of generation `generation`'s writes of epoch `epoch`:
/// 2^60 + g·2^38 + e. Larger for a later epoch of the same generation, and for any epoch of
/// a later generation than for any of an earlier one.
pub fn fence_timestamp(generation: u64, epoch: u64) -> Result<i64, SinkError> {
    if epoch >= 1 << EPOCH_BITS {
        return Err(SinkError::cassandra(
            "deriving a write timestamp",
            format!("epoch {epoch} does not fit in {EPOCH_BITS} bits (an epoch_ms below 10 ms?)"),
        ));
    }
    if generation > MAX_GENERATION {
        return Err(SinkError::cassandra(
            "deriving a write timestamp",
            format!("generation {generation} is beyond the last one ({MAX_GENERATION})"),
        ));
    }
    Ok(FENCE_BASE + ((generation as i64) << EPOCH_BITS) + epoch as i64)
}

/// Attempts of a claim that lost a race before it gives up.
const CLAIM_ATTEMPTS: usize = 20;

impl CassandraReader {
    /// The generation claimed last for `(job, process)`, read at SERIAL consistency (so a
    /// claim in progress is either seen whole or not at all).
    pub fn generation(&self, job: &str, process: usize) -> Result<Option<u64>, SinkError> {
        let keyspace = self.keyspace();
        let mut select = scylla::statement::unprepared::Statement::new(format!(
            "SELECT generation FROM {keyspace}.generations WHERE job = ? AND process = ?"
        ));
        select.set_consistency(Consistency::Serial);
        let what = "reading the generation";
        let rows: Vec<(Option<i64>,)> = self.block_on(async {
            let result = self
                .session()
                .query_unpaged(select, (job, process as i32))
                .await
                .map_err(|e| SinkError::cassandra(what, e.to_string()))?;
            result
                .into_rows_result()
                .map_err(|e| SinkError::cassandra(what, e.to_string()))?
                .rows::<(Option<i64>,)>()
                .map_err(|e| SinkError::cassandra(what, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SinkError::cassandra(what, e.to_string()))
        })?;
        Ok(rows.into_iter().next().and_then(|(g,)| g).map(|g| g as u64))
    }

    /// Claims the next generation of `(job, process)` (1 for the first start): a compare-and-
    /// set on its row, retried when another claim won the race. The generation returned is
    /// this process's alone; every later claim is larger.
    pub fn claim_generation(&self, job: &str, process: usize) -> Result<u64, SinkError> {
        let keyspace = self.keyspace();
        let what = "claiming a generation";
        for _ in 0..CLAIM_ATTEMPTS {
            let current = self.generation(job, process)?;
            let next = current.map_or(1, |g| g + 1);
            if next > MAX_GENERATION {
                return Err(SinkError::cassandra(what, "no generation left"));
            }
            let mut claim = scylla::statement::unprepared::Statement::new(match current {
                None => format!(
                    "INSERT INTO {keyspace}.generations (job, process, generation, claimed) \
                     VALUES (?, ?, ?, toTimestamp(now())) IF NOT EXISTS"
                ),
                Some(_) => format!(
                    "UPDATE {keyspace}.generations SET generation = ?, claimed = toTimestamp(now()) \
                     WHERE job = ? AND process = ? IF generation = ?"
                ),
            });
            claim.set_serial_consistency(Some(SerialConsistency::Serial));
            let applied = self.block_on(async {
                let result = match current {
                    None => {
                        self.session()
                            .query_unpaged(claim, (job, process as i32, next as i64))
                            .await
                    }
                    Some(g) => {
                        self.session()
                            .query_unpaged(claim, (next as i64, job, process as i32, g as i64))
                            .await
                    }
                }
                .map_err(|e| SinkError::cassandra(what, e.to_string()))?;
                let rows = result
                    .into_rows_result()
                    .map_err(|e| SinkError::cassandra(what, e.to_string()))?;
                // The first column of a conditional write's answer is `[applied]` (the row's
                // current values follow when it was not applied).
                let first = rows
                    .rows::<scylla::value::Row>()
                    .map_err(|e| SinkError::cassandra(what, e.to_string()))?
                    .next()
                    .transpose()
                    .map_err(|e| SinkError::cassandra(what, e.to_string()))?
                    .and_then(|row| row.columns.into_iter().next().flatten());
                match first {
                    Some(scylla::value::CqlValue::Boolean(applied)) => Ok(applied),
                    other => Err(SinkError::cassandra(
                        what,
                        format!("no [applied] in the answer to a conditional write: {other:?}"),
                    )),
                }
            })?;
            if applied {
                return Ok(next);
            }
        }
        Err(SinkError::cassandra(
            what,
            format!("{CLAIM_ATTEMPTS} attempts lost the race for ({job}, process {process})"),
        ))
    }

    /// Ok if `generation` is still the latest claimed of `(job, process)`; else the process is
    /// fenced: a newer start has taken over, and this one must not delete or write anything.
    pub fn check_generation(
        &self,
        job: &str,
        process: usize,
        generation: u64,
    ) -> Result<(), SinkError> {
        match self.generation(job, process)? {
            Some(g) if g == generation => Ok(()),
            found => Err(SinkError::Fenced {
                generation,
                current: found.unwrap_or(0),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_generations_and_epochs_sort_above() {
        let wall_clock_now = 1_800_000_000_000_000i64; // µs, 2027
        let epoch_200ms = 1_800_000_000_000 / 200;
        let a = fence_timestamp(1, epoch_200ms).unwrap();
        assert!(a > wall_clock_now);
        assert!(fence_timestamp(1, epoch_200ms + 1).unwrap() > a);
        // A new generation beats the old one's latest epoch with its earliest.
        assert!(fence_timestamp(2, 0).unwrap() > fence_timestamp(1, (1 << 38) - 1).unwrap());
        assert!(fence_timestamp(MAX_GENERATION, (1 << 38) - 1).is_ok());
        assert!(fence_timestamp(MAX_GENERATION + 1, 0).is_err());
        let e = fence_timestamp(1, 1 << 38).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
