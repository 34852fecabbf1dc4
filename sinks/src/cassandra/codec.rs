//! How the dataflow's values are encoded in CQL columns (see `schema.cql`).

use rankmysteps_dataflow::event::{Day, User};
use scylla::value::CqlDate;
use uuid::Uuid;

use crate::SinkError;

/// CQL `date` is an unsigned 32-bit day number centred on 1970-01-01 at 2^31.
const DATE_CENTRE: i64 = 1 << 31;

/// A [`Day`] (days since 1970-01-01) as a CQL `date`.
pub fn day_to_cql(day: Day) -> CqlDate {
    // Every i32 fits: -2^31 + 2^31 = 0 and (2^31 - 1) + 2^31 = 2^32 - 1.
    CqlDate((i64::from(day) + DATE_CENTRE) as u32)
}

/// A CQL `date` as a [`Day`].
pub fn day_from_cql(date: CqlDate) -> Day {
    (i64::from(date.0) - DATE_CENTRE) as Day
}

/// A user as a CQL `uuid` (the same 128-bit value).
pub fn user_to_uuid(user: User) -> Uuid {
    Uuid::from_u128(user)
}

/// A CQL `uuid` as a user.
pub fn user_from_uuid(uuid: Uuid) -> User {
    uuid.as_u128()
}

/// A user as the 16-byte big-endian `blob` that sorts like the 128-bit value (clustering keys in
/// listing order: Cassandra's `uuid` order is not the value order).
pub fn user_to_key(user: User) -> [u8; 16] {
    user.to_be_bytes()
}

/// The user of a 16-byte key written by [`user_to_key`].
pub fn user_from_key(key: &[u8]) -> Result<User, SinkError> {
    let bytes: [u8; 16] = key
        .try_into()
        .map_err(|_| SinkError::cassandra("reading a user key", "not 16 bytes"))?;
    Ok(User::from_be_bytes(bytes))
}

/// A count or total as a CQL `bigint`. Totals are bounded by events × max steps, far below
/// 2^63; a larger value is a bug upstream and is refused rather than wrapped.
pub fn to_bigint(value: u64) -> Result<i64, SinkError> {
    i64::try_from(value)
        .map_err(|_| SinkError::cassandra("encoding a bigint", format!("{value} exceeds 2^63-1")))
}

/// A CQL `bigint` read back as a count; a negative value means the table was written by
/// something else.
pub fn from_bigint(value: i64) -> Result<u64, SinkError> {
    u64::try_from(value)
        .map_err(|_| SinkError::cassandra("decoding a bigint", format!("{value} is negative")))
}
