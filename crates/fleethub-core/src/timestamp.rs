//! Twin timestamps: Azure's `$lastUpdated` text form and the compact tick count the twin keeps instead.
//!
//! Azure writes `$lastUpdated` as UTC with exactly seven fractional digits and a `Z`
//! (`2024-05-01T10:00:00.0000000Z`), i.e. .NET's 100-nanosecond ticks. The twin therefore stores
//! time as an integer count of 100 ns ticks since the Unix epoch: it is exactly what the text can
//! express, costs one JSON number in storage, and is formatted only when a twin is rendered.

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

const NANOS_PER_TICK: i128 = 100;

/// Formats `at` the way Azure IoT Hub writes twin `$lastUpdated` values: converted to UTC,
/// exactly 7 fractional digits (sub-100 ns precision is truncated), suffix `Z`.
///
/// ```
/// use time::macros::datetime;
/// assert_eq!(
///     fleethub_core::format_twin_time(datetime!(2024-05-01 12:00:00.123456789 +02:00)),
///     "2024-05-01T10:00:00.1234567Z"
/// );
/// ```
pub fn format_twin_time(at: OffsetDateTime) -> String {
    TwinTicks::from_datetime(at).format()
}

/// A point in time as 100 ns ticks since 1970-01-01T00:00:00Z.
///
/// Invariant: the value always converts back to an `OffsetDateTime` (it was built from one, or
/// was range-checked when deserialised), so formatting never fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub(crate) struct TwinTicks(i64);

impl TwinTicks {
    pub(crate) fn from_datetime(at: OffsetDateTime) -> Self {
        let ticks = at.unix_timestamp_nanos().div_euclid(NANOS_PER_TICK);
        // `time` (without `large-dates`) stops at year ±9999, about ±3.2e18 ticks: within i64.
        Self(i64::try_from(ticks).expect("the year range of `time` fits in i64 ticks"))
    }

    fn to_datetime(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * NANOS_PER_TICK).ok()
    }

    /// The Azure text form (see [`format_twin_time`]).
    pub(crate) fn format(self) -> String {
        let utc = self
            .to_datetime()
            .expect("twin ticks are range-checked on construction");
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
            utc.year(),
            u8::from(utc.month()),
            utc.day(),
            utc.hour(),
            utc.minute(),
            utc.second(),
            utc.nanosecond() / 100
        )
    }

    #[cfg(test)]
    pub(crate) fn raw(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for TwinTicks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = i64::deserialize(deserializer)?;
        let ticks = Self(raw);
        match ticks.to_datetime() {
            Some(_) => Ok(ticks),
            None => Err(serde::de::Error::custom(format_args!(
                "twin timestamp {raw} (100 ns ticks since 1970) is outside the supported years"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_with_seven_fractional_digits_in_utc() {
        let cases = [
            (
                datetime!(2024-05-01 10:00 UTC),
                "2024-05-01T10:00:00.0000000Z",
            ),
            (
                datetime!(2016-03-30 16:24:48.789 UTC),
                "2016-03-30T16:24:48.7890000Z",
            ),
            (
                datetime!(2024-01-01 00:30:00.00000019 +01:00),
                "2023-12-31T23:30:00.0000001Z",
            ),
            (
                datetime!(0001-01-01 00:00 UTC),
                "0001-01-01T00:00:00.0000000Z",
            ),
            (
                datetime!(1969-12-31 23:59:59.9999999 UTC),
                "1969-12-31T23:59:59.9999999Z",
            ),
        ];
        for (at, expected) in cases {
            assert_eq!(format_twin_time(at), expected, "{at}");
        }
    }

    #[test]
    fn ticks_round_trip_through_json_and_reject_impossible_values() {
        let ticks = TwinTicks::from_datetime(datetime!(2024-05-01 10:00:00.1234567 UTC));
        let json = serde_json::to_string(&ticks).expect("ticks serialise");
        assert_eq!(json, "17145576001234567");
        let back: TwinTicks = serde_json::from_str(&json).expect("ticks deserialise");
        assert_eq!(back, ticks);
        let error = serde_json::from_str::<TwinTicks>(&i64::MAX.to_string())
            .expect_err("year 29000 is out of range");
        assert!(
            error.to_string().contains("outside the supported years"),
            "{error}"
        );
    }
}
