//! The time zone table (`data/timezones/map_data.txt`) against libphonenumber's own mapping,
//! as the Python `phonenumbers` package of the same release carries it: every prefix with
//! the same zones in the same order, and the longest-prefix look-up giving the same answer
//! for a sample of numbers (one zone, several zones, a country alone, unknown prefixes).
//! Needs the test virtualenv (tests/clients/requirements.txt); skipped only when asked by
//! name: SKIP_GENERATED_CLIENTS=1.

mod common;

use std::{collections::BTreeMap, process::Command};

use call_orchestrator::domain::{PhoneNumber, schedule::zones};

const PYTHON: &str = r#"
import json, sys
import phonenumbers
from phonenumbers import timezone, tzdata
numbers = sys.argv[1:]
looked_up = {}
for number in numbers:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        # No country has this code: no prefix of the table can match it either.
        looked_up[number] = []
        continue
    zones = timezone.time_zones_for_geographical_number(parsed)
    looked_up[number] = [] if list(zones) == [timezone.UNKNOWN_TIMEZONE] else list(zones)
print(json.dumps({
    "version": phonenumbers.__version__,
    "table": {prefix: list(zones) for prefix, zones in tzdata.TIMEZONE_DATA.items()},
    "looked_up": looked_up,
}))
"#;

const SAMPLE: &[&str] = &[
    "+12015550123",  // New Jersey: one zone
    "+14155550100",  // San Francisco
    "+19995550100",  // +1 with no known area code: every North American zone
    "+79161234567",  // Russia, Moscow mobile
    "+74232123456",  // Vladivostok
    "+77012345678",  // Kazakhstan
    "+447912345678", // a UK mobile: the four zones of +44
    "+61212345678",  // Australia: several zones
    "+5215512345678",
    "+966501234567",
    "+33123456789",
    "+80012345678", // no country: unknown
    "+99912345678", // unassigned: unknown
    "+3535392530000",
];

#[test]
fn the_table_is_libphonenumbers() {
    if std::env::var_os("SKIP_GENERATED_CLIENTS").is_some_and(|v| v == "1") {
        eprintln!("skipped, as SKIP_GENERATED_CLIENTS=1 asks");
        return;
    }
    let venv = common::python_venv().expect("the Python virtualenv of the tests");
    let output = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(PYTHON)
        .args(SAMPLE)
        .output()
        .expect("python");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        answer["version"],
        zones::DATA_VERSION.trim(),
        "tests/clients/requirements.txt pins another phonenumbers than data/timezones/VERSION"
    );
    let theirs: BTreeMap<String, Vec<String>> =
        serde_json::from_value(answer["table"].clone()).unwrap();
    let ours: BTreeMap<String, Vec<String>> = zones::entries()
        .map(|(prefix, names)| (prefix.to_owned(), names.map(str::to_owned).collect()))
        .collect();
    assert_eq!(ours.len(), theirs.len());
    for (prefix, zones) in &theirs {
        assert_eq!(ours.get(prefix), Some(zones), "prefix {prefix}");
    }
    for number in SAMPLE {
        let expected: Vec<String> =
            serde_json::from_value(answer["looked_up"][number].clone()).unwrap();
        let found: Vec<&str> = zones::for_number(&PhoneNumber::parse(number).unwrap())
            .iter()
            .map(|tz| tz.name())
            .collect();
        assert_eq!(found, expected, "{number}");
    }
}
