//! CloudWatch's "Specification: Embedded metric format", as checks on one
//! log line, so a test can tell a record CloudWatch would turn into metrics
//! from one it would keep as a plain log line.

use serde_json::{Map, Value};

/// The units the specification allows.
const UNITS: [&str; 27] = [
    "Seconds",
    "Microseconds",
    "Milliseconds",
    "Bytes",
    "Kilobytes",
    "Megabytes",
    "Gigabytes",
    "Terabytes",
    "Bits",
    "Kilobits",
    "Megabits",
    "Gigabits",
    "Terabits",
    "Percent",
    "Count",
    "Bytes/Second",
    "Kilobytes/Second",
    "Megabytes/Second",
    "Gigabytes/Second",
    "Terabytes/Second",
    "Bits/Second",
    "Kilobits/Second",
    "Megabits/Second",
    "Gigabits/Second",
    "Terabits/Second",
    "Count/Second",
    "None",
];

/// The log lines of `text` that are EMF records (an object with `_aws`),
/// each checked against the specification; a line that claims to be one
/// and breaks a rule fails with the rule.
pub fn records(text: &str) -> Vec<Map<String, Value>> {
    text.lines()
        .filter(|l| l.trim_start().starts_with('{') && l.contains("\"_aws\""))
        .map(|l| check(l).unwrap_or_else(|e| panic!("not a valid EMF record ({e}): {l}")))
        .collect()
}

/// One line against the specification's rules.
pub fn check(line: &str) -> Result<Map<String, Value>, String> {
    let root: Value = serde_json::from_str(line.trim()).map_err(|e| format!("not JSON: {e}"))?;
    let root = root.as_object().ok_or("the root is not an object")?.clone();
    let aws = root["_aws"].as_object().ok_or("_aws is not an object")?;
    let ts = aws.get("Timestamp").ok_or("_aws.Timestamp is missing")?;
    if !ts.is_u64() {
        return Err("_aws.Timestamp is not a number of milliseconds".into());
    }
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .ok_or("_aws.CloudWatchMetrics is not an array")?;
    for d in directives {
        let namespace = d["Namespace"]
            .as_str()
            .ok_or("a Namespace is not a string")?;
        if namespace.is_empty() || namespace.len() > 1024 {
            return Err(format!("Namespace {namespace:?} is not 1-1024 characters"));
        }
        let sets = d["Dimensions"]
            .as_array()
            .ok_or("Dimensions is not an array")?;
        for set in sets {
            let set = set.as_array().ok_or("a DimensionSet is not an array")?;
            if set.len() > 30 {
                return Err(format!(
                    "a DimensionSet has {} dimensions (30 at most)",
                    set.len()
                ));
            }
            for name in set {
                let name = name.as_str().ok_or("a dimension name is not a string")?;
                match root.get(name) {
                    Some(Value::String(v)) if v.len() <= 1024 => {}
                    Some(other) => {
                        return Err(format!("dimension {name} is {other}, not a string"))
                    }
                    None => return Err(format!("dimension {name} has no member in the root")),
                }
            }
        }
        let metrics = d["Metrics"].as_array().ok_or("Metrics is not an array")?;
        if metrics.len() > 100 {
            return Err(format!(
                "{} metrics in a directive (100 at most)",
                metrics.len()
            ));
        }
        for m in metrics {
            let name = m["Name"]
                .as_str()
                .ok_or("a metric's Name is not a string")?;
            if name.is_empty() || name.len() > 1024 {
                return Err(format!("metric name {name:?} is not 1-1024 characters"));
            }
            if let Some(unit) = m.get("Unit") {
                let unit = unit.as_str().ok_or("a Unit is not a string")?;
                if !UNITS.contains(&unit) {
                    return Err(format!(
                        "{name}'s unit {unit} is not one of the specification's"
                    ));
                }
            }
            if let Some(r) = m.get("StorageResolution") {
                if r != 1 && r != 60 {
                    return Err(format!("{name}'s StorageResolution {r} is not 1 or 60"));
                }
            }
            for key in m.as_object().into_iter().flat_map(|o| o.keys()) {
                if !["Name", "Unit", "StorageResolution"].contains(&key.as_str()) {
                    return Err(format!(
                        "metric {name} has a member {key} the specification does not define"
                    ));
                }
            }
            match root.get(name) {
                Some(Value::Number(_)) => {}
                Some(Value::Array(values))
                    if values.len() <= 100 && values.iter().all(Value::is_number) => {}
                Some(other) => {
                    return Err(format!(
                        "metric {name} is {other}, not a number or up to 100 numbers"
                    ))
                }
                // A declared metric may be absent from a record; CloudWatch skips it.
                None => {}
            }
        }
    }
    Ok(root)
}

/// The records whose `Function` dimension is `function` and whose `Run` is
/// `run` (when given).
pub fn of<'a>(
    records: &'a [Map<String, Value>],
    function: &'a str,
    run: Option<&'a str>,
) -> impl Iterator<Item = &'a Map<String, Value>> {
    records.iter().filter(move |r| {
        r.get("Function").and_then(Value::as_str) == Some(function)
            && run.is_none_or(|run| r.get("Run").and_then(Value::as_str) == Some(run))
    })
}

/// The sum of metric `name` over `records`.
pub fn sum<'a>(records: impl Iterator<Item = &'a Map<String, Value>>, name: &str) -> f64 {
    records
        .filter_map(|r| r.get(name))
        .map(|v| v.as_f64().expect("a metric value is a number"))
        .sum()
}

/// The unit a record declares for metric `name`.
pub fn unit(record: &Map<String, Value>, name: &str) -> Option<String> {
    record["_aws"]["CloudWatchMetrics"]
        .as_array()?
        .iter()
        .flat_map(|d| d["Metrics"].as_array().into_iter().flatten())
        .find(|m| m["Name"] == name)?
        .get("Unit")
        .and_then(Value::as_str)
        .map(str::to_string)
}
