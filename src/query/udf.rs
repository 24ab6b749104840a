//! Date-coarsening functions. Raw dates are not dimensions; these turn them
//! into values with a small public domain, so their output can be grouped
//! by and filtered on.
//!
//! | function | result | public domain |
//! |---|---|---|
//! | `umur(tanggal_lahir)` | age in whole years on the snapshot's `tanggal_data`, top-coded: 120 means 120 or older | 0..=120 |
//! | `umur_pada(tanggal_lahir, DATE '2026-07-01')` | age on the first day of a month (school year: 1 July), top-coded at 120; NULL if not yet born | 0..=120, NULL |
//! | `kelompok_umur(age, width)` | band label: `00-04`, `05-09`, … and an open top band `75+` | see [`age_band_labels`] |
//! | `wajib_ktp(age, status_perkawinan)` | `WAJIB` for residents who must hold a KTP-el (aged 17 or more, or married or once married: UU 24/2013 Pasal 63), else `BELUM WAJIB` | `WAJIB`, `BELUM WAJIB` |
//! | `tahun(date)` | calendar year, top-coded: the year 120 years before `tanggal_data` also stands for every earlier year | 121 years up to the year of `tanggal_data` |
//!
//! Top-coding (rather than NULL for out-of-range values) keeps every
//! possible value inside the declared domain, so the result grid never
//! depends on the data. `umur_pada` takes only the first day of a month, so
//! queries on neighbouring dates cannot be differenced to count people born
//! on one day.
//!
//! Age bands: zero-padded `LL-HH` labels of `width` years starting at 0, so
//! they sort as text; the top band is open (`NN+`) and starts at the largest
//! multiple of `width` not above 75. Widths 1..=25 are accepted.

use std::sync::Arc;

use chrono::Datelike;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Date32Type, Int32Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};

use crate::calendar::{age_on, days_to_date};

/// SQL name of `umur(tanggal_lahir)`: age in whole years on `tanggal_data`.
pub const UMUR: &str = "umur";
/// SQL name of `umur_pada(tanggal_lahir, date)`: age on the 1st of a month.
pub const UMUR_PADA: &str = "umur_pada";
/// SQL name of `kelompok_umur(age, width)`: the age band label.
pub const KELOMPOK_UMUR: &str = "kelompok_umur";
/// SQL name of `tahun(date)`: the top-coded calendar year.
pub const TAHUN: &str = "tahun";
/// SQL name of `wajib_ktp(age, status_perkawinan)`: KTP-el obligation.
pub const WAJIB_KTP: &str = "wajib_ktp";

/// Highest age in the public domain; also the clamp bound for sums of ages.
pub const MAX_AGE: i32 = 120;
/// Top of the open age band.
pub const TOP_BAND: i32 = 75;
/// Widest band `kelompok_umur` accepts, in years.
pub const MAX_BAND_WIDTH: i64 = 25;

/// Band label of an age.
pub fn age_band(age: i32, width: i32) -> String {
    let top = TOP_BAND / width * width;
    if age >= top {
        format!("{top:02}+")
    } else {
        let lo = age / width * width;
        format!("{lo:02}-{:02}", lo + width - 1)
    }
}

/// Every band label for a width, in order: the public domain of
/// `kelompok_umur`.
pub fn age_band_labels(width: i32) -> Vec<String> {
    let top = TOP_BAND / width * width;
    let mut v: Vec<String> = (0..top)
        .step_by(width as usize)
        .map(|a| age_band(a, width))
        .collect();
    v.push(age_band(top, width));
    v
}

fn dates_to_ints(
    args: &[ColumnarValue],
    rows: usize,
    f: impl Fn(i32, Option<i32>) -> Option<i32>,
) -> Result<ColumnarValue> {
    let arrays = ColumnarValue::values_to_arrays(args)?;
    let dates = arrays[0].as_primitive::<Date32Type>();
    let second = arrays.get(1).map(|a| a.as_primitive::<Date32Type>());
    let out: Int32Array = (0..rows.max(dates.len()))
        .map(|i| {
            if dates.is_null(i) {
                return None;
            }
            let on = match second {
                Some(s) if s.is_null(i) => return None,
                Some(s) => Some(s.value(i)),
                None => None,
            };
            f(dates.value(i), on)
        })
        .collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// `umur(date)`: age on the snapshot's reference date.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Umur {
    as_of: i32,
    signature: Signature,
}

impl ScalarUDFImpl for Umur {
    fn name(&self) -> &str {
        UMUR
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let as_of = self.as_of;
        dates_to_ints(&args.args, args.number_rows, |b, _| {
            let a = age_on(b, as_of);
            (a >= 0).then_some(a.min(MAX_AGE))
        })
    }
}

/// `umur_pada(date, on)`: age on a given date.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UmurPada {
    /// The snapshot's reference date as (month, day) when it lies within
    /// [`ALIGN_WITHIN_DAYS`] of 1 July: ages on 1 July are then taken on
    /// that day of the year, so that the year is split at one day only.
    align: Option<(u32, u32)>,
    signature: Signature,
}

/// Month-day distance below which 1 July is aligned with the snapshot's
/// reference date ([`UmurPada`]). Ages on 1 July and on a reference date
/// of 30 June split birthdays a day apart: two tables, one of each,
/// differ exactly in the cells of the people born on 1 July, naming their
/// birth date. Aligned, someone born on 1 July counts a year younger on
/// 1 July, and no table tells the two days apart.
pub const ALIGN_WITHIN_DAYS: i64 = 90;

/// The (month, day) 1 July is aligned with on a snapshot with reference
/// date `as_of`, if any.
pub fn july_alignment(as_of: i32) -> Option<(u32, u32)> {
    let reference = days_to_date(as_of);
    let july = chrono::NaiveDate::from_ymd_opt(reference.year(), 7, 1)?;
    let gap = (july - reference).num_days().rem_euclid(365);
    (gap.min(365 - gap) < ALIGN_WITHIN_DAYS && (reference.month(), reference.day()) != (7, 1))
        .then_some((reference.month(), reference.day()))
}

impl ScalarUDFImpl for UmurPada {
    fn name(&self) -> &str {
        UMUR_PADA
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut args = args;
        // The reference date is a literal: aligned once, not per row.
        let literal_on = match &args.args.get(1) {
            Some(ColumnarValue::Scalar(ScalarValue::Date32(Some(on)))) => Some(*on),
            _ => None,
        };
        if let Some(on) = literal_on {
            args.args[1] = ColumnarValue::Scalar(ScalarValue::Date32(Some(self.aligned(on))));
        }
        dates_to_ints(&args.args, args.number_rows, |b, on| {
            let on = on.expect("two arguments");
            let on = if literal_on.is_some() {
                on
            } else {
                self.aligned(on)
            };
            let a = age_on(b, on);
            (a >= 0).then_some(a.min(MAX_AGE))
        })
    }
}

impl UmurPada {
    /// The day ages are taken on for `on`: 1 July moved to the reference
    /// date's day of that year when [`july_alignment`] says so.
    fn aligned(&self, on: i32) -> i32 {
        let Some((month, day)) = self.align else {
            return on;
        };
        let d = days_to_date(on);
        if (d.month(), d.day()) != (7, 1) {
            return on;
        }
        chrono::NaiveDate::from_ymd_opt(d.year(), month, day)
            .or_else(|| chrono::NaiveDate::from_ymd_opt(d.year(), month, 28))
            .map_or(on, crate::calendar::date_to_days)
    }
}

/// `tahun(date)`: the calendar year, top-coded at [`earliest_year`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Tahun {
    earliest: i32,
    signature: Signature,
}

/// The earliest year `tahun` reports on a snapshot with reference date
/// `as_of` (Date32 days); earlier years are reported as this one.
pub fn earliest_year(as_of: i32) -> i32 {
    days_to_date(as_of).year() - MAX_AGE
}

impl ScalarUDFImpl for Tahun {
    fn name(&self) -> &str {
        TAHUN
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let earliest = self.earliest;
        dates_to_ints(&args.args, args.number_rows, |d, _| {
            Some(days_to_date(d).year().max(earliest))
        })
    }
}

/// `kelompok_umur(age, width)`: age band label.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KelompokUmur {
    signature: Signature,
}

impl ScalarUDFImpl for KelompokUmur {
    fn name(&self) -> &str {
        KELOMPOK_UMUR
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let width = match &args.args[1] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(w))) => *w,
            _ => {
                return exec_err!(
                    "kelompok_umur: the band width must be a number literal, e.g. kelompok_umur(umur(tanggal_lahir), 5)"
                );
            }
        };
        if !(1..=MAX_BAND_WIDTH).contains(&width) {
            return exec_err!(
                "kelompok_umur: band width {width} is out of range; use 1 to {MAX_BAND_WIDTH} years"
            );
        }
        let ages: ArrayRef = args.args[0].to_array(args.number_rows)?;
        let ages = datafusion::arrow::compute::cast(&ages, &DataType::Int32)?;
        let ages = ages.as_primitive::<Int32Type>();
        let out: StringArray = ages
            .iter()
            .map(|a| a.filter(|a| *a >= 0).map(|a| age_band(a, width as i32)))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `wajib_ktp(age, status_perkawinan)`: whether the resident must hold a
/// KTP-el, a catalogued classification of two dimensions (so a table can
/// be restricted to it without OR across dimensions).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WajibKtp {
    signature: Signature,
}

impl ScalarUDFImpl for WajibKtp {
    fn name(&self) -> &str {
        WAJIB_KTP
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ages: ArrayRef = args.args[0].to_array(args.number_rows)?;
        let ages = datafusion::arrow::compute::cast(&ages, &DataType::Int32)?;
        let ages = ages.as_primitive::<Int32Type>();
        let status: ArrayRef = args.args[1].to_array(args.number_rows)?;
        let status = datafusion::arrow::compute::cast(&status, &DataType::Utf8)?;
        let status = status.as_string::<i32>();
        let out: StringArray = (0..ages.len())
            .map(|i| {
                let adult = ages.is_valid(i) && ages.value(i) >= 17;
                let married = status.is_valid(i) && status.value(i) != "BELUM KAWIN";
                Some(if adult || married {
                    "WAJIB"
                } else {
                    "BELUM WAJIB"
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// All coarsening functions for a snapshot with reference date `as_of`
/// (days since epoch).
pub fn coarsening_udfs(as_of: i32) -> Vec<ScalarUDF> {
    let one_date = || Signature::exact(vec![DataType::Date32], Volatility::Immutable);
    vec![
        ScalarUDF::new_from_impl(Umur {
            as_of,
            signature: one_date(),
        }),
        ScalarUDF::new_from_impl(UmurPada {
            align: july_alignment(as_of),
            signature: Signature::exact(
                vec![DataType::Date32, DataType::Date32],
                Volatility::Immutable,
            ),
        }),
        ScalarUDF::new_from_impl(Tahun {
            earliest: earliest_year(as_of),
            signature: one_date(),
        }),
        ScalarUDF::new_from_impl(KelompokUmur {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Int32, DataType::Int64]),
                    TypeSignature::Exact(vec![DataType::Int64, DataType::Int64]),
                ],
                Volatility::Immutable,
            ),
        }),
        ScalarUDF::new_from_impl(WajibKtp {
            signature: Signature::any(2, Volatility::Immutable),
        }),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn band_labels() {
        assert_eq!(age_band(0, 5), "00-04");
        assert_eq!(age_band(17, 5), "15-19");
        assert_eq!(age_band(75, 5), "75+");
        assert_eq!(age_band(99, 10), "70+");
        let five = age_band_labels(5);
        assert_eq!(five.len(), 16);
        assert_eq!(five.last().unwrap(), "75+");
        assert_eq!(age_band_labels(1).len(), 76);
    }
}
