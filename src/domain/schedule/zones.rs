//! The callee's time zones, from libphonenumber's time zone data for the number's prefix.
//!
//! `data/timezones/map_data.txt` is libphonenumber's own file (`resources/timezones/`,
//! Apache 2.0), checked in as published and built into the binary; its release is in
//! `data/timezones/VERSION`, and `scripts/update-timezone-data` replaces both with a newer
//! release's. No maintained crate carries this table (the `phonenumber` crate has no time
//! zones, and `namba`, which does, has had one release on older data), so the file is read
//! here: one `prefix|Zone&Zone` line per prefix, longest prefix wins, as libphonenumber's
//! `PrefixTimeZonesMapper` reads it. `tests/timezone_data.rs` checks the table against the
//! Python `phonenumbers` package of the same release.

use std::{collections::HashMap, sync::LazyLock};

use chrono_tz::Tz;

use crate::domain::PhoneNumber;

/// libphonenumber's file, as published.
const MAP_DATA: &str = include_str!("../../../data/timezones/map_data.txt");
/// The libphonenumber release it comes from.
pub const DATA_VERSION: &str = include_str!("../../../data/timezones/VERSION");

struct Table {
    zones: HashMap<&'static str, Vec<Tz>>,
    longest_prefix: usize,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let mut zones = HashMap::new();
    let mut longest_prefix = 0;
    for (prefix, names) in entries() {
        // Every name of the file is in the IANA database chrono-tz carries: a unit test
        // checks it, so a data update that brings a name chrono-tz lacks fails the build's
        // tests rather than leaving that zone out (which would drop its window).
        let parsed: Vec<Tz> = names.filter_map(|name| name.parse().ok()).collect();
        if !parsed.is_empty() {
            longest_prefix = longest_prefix.max(prefix.len());
            zones.insert(prefix, parsed);
        }
    }
    Table {
        zones,
        longest_prefix,
    }
});

/// The file's lines as (prefix, zone names), comments and blank lines left out.
pub fn entries() -> impl Iterator<Item = (&'static str, impl Iterator<Item = &'static str>)> {
    MAP_DATA
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('|'))
        .map(|(prefix, zones)| (prefix, zones.split('&').filter(|z| !z.is_empty())))
}

/// The time zones libphonenumber maps the number's longest known prefix to (several for a
/// prefix that spans them, like `+1` alone or `+7`); empty when no prefix is known.
pub fn for_number(number: &PhoneNumber) -> &'static [Tz] {
    let digits = number.as_str().trim_start_matches('+');
    let table = &*TABLE;
    (1..=digits.len().min(table.longest_prefix))
        .rev()
        .find_map(|len| table.zones.get(&digits[..len]))
        .map_or(&[], Vec::as_slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(number: &str) -> Vec<&'static str> {
        for_number(&PhoneNumber::parse(number).unwrap())
            .iter()
            .map(|tz| tz.name())
            .collect()
    }

    #[test]
    fn every_zone_of_the_file_is_known_to_the_time_zone_database() {
        let unknown: Vec<&str> = entries()
            .flat_map(|(_, names)| names)
            .filter(|name| name.parse::<Tz>().is_err())
            .collect();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(entries().count() > 3000);
    }

    #[test]
    fn the_longest_prefix_wins() {
        assert_eq!(zones("+12015550123"), ["America/New_York"]);
        assert_eq!(zones("+14155550100"), ["America/Los_Angeles"]);
        assert_eq!(zones("+966501234567"), ["Asia/Riyadh"]);
        // A North American number with no known area code: every zone of +1.
        assert!(zones("+19995550100").len() > 30);
        assert!(zones("+79161234567").contains(&"Europe/Moscow"));
    }

    #[test]
    fn unknown_prefixes_have_no_zone() {
        assert!(zones("+80012345678").is_empty());
        assert!(zones("+99912345678").is_empty());
    }
}
