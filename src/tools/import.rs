//! `call-orchestrator import FILE.csv`: a campaign from a CSV file, sent through the batch
//! route of a running service, with a progress bar and a per-row report.
//!
//! Columns: `to`, `scriptId`, optionally `notBefore`, `notAfter` (RFC 3339) and `timezone`
//! (IANA), and any number of `metadata.<key>` (text values; empty cells are left out). Rows
//! are checked here first with the service's own rules; the valid ones are sent in batches
//! of up to 1000 and created in file order, the others reported. With `--campaign ID` they
//! go to that campaign (`POST /api/v1/campaigns/{ID}/calls`), and `scriptId` may be left
//! empty when the campaign has one.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::{api::MAX_BATCH, domain::CallPayload};

/// 503s in a row a batch is sent again through (each waits its `Retry-After`, 1 to 10 s).
const MAX_BUSY: u32 = 60;

#[derive(Args, Clone, Debug)]
pub struct ImportArgs {
    /// The CSV file: a header row, then one call per row.
    pub file: PathBuf,
    /// The service's base URL.
    #[arg(
        long,
        env = "CALL_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    pub url: String,
    /// One of the service's API_KEYS, when it has any.
    #[arg(long, env = "CALL_ORCHESTRATOR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Check every row and report, without sending anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Calls per request (at most 1000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub batch_size: u16,
    /// The file is a suppression (do-not-call) list, not calls: columns `number`, `reason`
    /// and optionally `expiresAt` (RFC 3339), sent to `POST /api/v1/suppressions/batch`.
    #[arg(long, conflicts_with = "campaign")]
    pub suppressions: bool,
    /// Add the calls to this campaign (`POST /api/v1/campaigns/{ID}/calls`): its rules apply
    /// to them, and rows may leave `scriptId` empty (or the column out) when it has one.
    #[arg(long, value_name = "ID")]
    pub campaign: Option<uuid::Uuid>,
}

/// The file's reader and its header row; cells trimmed, every row as wide as the header.
fn open_csv(
    file: &std::path::Path,
) -> anyhow::Result<(csv::Reader<std::fs::File>, csv::StringRecord)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_path(file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let headers = reader
        .headers()
        .context("the CSV has no header row")?
        .clone();
    Ok((reader, headers))
}

/// A row, or `None` with the row rejected for not being valid CSV.
fn record_or_rejected(
    record: Result<csv::StringRecord, csv::Error>,
    rejected: &mut Vec<Rejected>,
) -> Option<csv::StringRecord> {
    match record {
        Ok(record) => Some(record),
        Err(err) => {
            let line = err.position().map_or(0, |p| p.line());
            rejected.push(Rejected {
                line,
                reason: format!("not a valid CSV row: {err}"),
            });
            None
        }
    }
}

/// Reads and checks a suppression list: the valid rows (with their lines) and the rejected.
pub fn read_suppressions(file: &std::path::Path) -> anyhow::Result<(Vec<Row>, Vec<Rejected>)> {
    let (mut reader, headers) = open_csv(file)?;
    let column = |name: &str| headers.iter().position(|h| h == name);
    let number_at = column("number").context("the CSV has no `number` column")?;
    let reason_at = column("reason").context("the CSV has no `reason` column")?;
    let expires_at = column("expiresAt");
    if let Some(unknown) = headers
        .iter()
        .find(|h| !matches!(*h, "number" | "reason" | "expiresAt"))
    {
        anyhow::bail!("column `{unknown}` is not number, reason or expiresAt");
    }
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for record in reader.records() {
        let Some(record) = record_or_rejected(record, &mut rejected) else {
            continue;
        };
        let line = record.position().map_or(0, |p| p.line());
        let mut problems = Vec::new();
        let number =
            match crate::domain::PhoneNumber::parse(record.get(number_at).unwrap_or_default()) {
                Ok(number) => {
                    if let Some(first) = seen.insert(number.as_str().to_owned(), line) {
                        problems.push(format!("`number` is the number of line {first} too"));
                    }
                    Some(number)
                }
                Err(err) => {
                    problems.push(format!("`number` {err}"));
                    None
                }
            };
        let reason = crate::api::check_reason(record.get(reason_at).unwrap_or_default(), "reason")
            .map_err(|e| problems.push(e.message))
            .ok();
        let expires = match expires_at
            .and_then(|i| record.get(i))
            .filter(|v| !v.is_empty())
        {
            None => Some(Value::Null),
            Some(raw) => match chrono::DateTime::parse_from_rfc3339(raw) {
                Ok(at) => Some(Value::from(at.with_timezone(&chrono::Utc).to_rfc3339())),
                Err(_) => {
                    problems.push(format!("`expiresAt` `{raw}` is not an RFC 3339 instant"));
                    None
                }
            },
        };
        match (number, reason, expires) {
            (Some(number), Some(reason), Some(expires)) if problems.is_empty() => valid.push((
                line,
                json!({"number": number.as_str(), "reason": reason, "expiresAt": expires}),
            )),
            _ => rejected.push(Rejected {
                line,
                reason: problems.join("; "),
            }),
        }
    }
    Ok((valid, rejected))
}

/// One row that was not imported.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Line in the file (the header is line 1).
    pub line: u64,
    pub reason: String,
}

/// What an import came to.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub rows: usize,
    pub valid: usize,
    pub created: usize,
    pub rejected: Vec<Rejected>,
}

/// A valid row: its line and the call's JSON body.
pub type Row = (u64, Value);

/// A script that stands for the campaign's while rows are checked here.
const CAMPAIGN_SCRIPT: &str = "campaign-script";

/// Reads and checks the file: the valid calls (with their lines) and the rejected rows. With
/// `campaign_script` (the rows go to a campaign that has a script), a row may leave
/// `scriptId` out.
pub fn read_rows(
    file: &std::path::Path,
    campaign_script: bool,
) -> anyhow::Result<(Vec<Row>, Vec<Rejected>)> {
    let (mut reader, headers) = open_csv(file)?;
    let column = |name: &str| headers.iter().position(|h| h == name);
    let to_at = column("to").context("the CSV has no `to` column")?;
    let script_at = column("scriptId");
    if script_at.is_none() && !campaign_script {
        anyhow::bail!(
            "the CSV has no `scriptId` column (only a campaign with a script may do without)"
        );
    }
    let metadata_at: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| h.strip_prefix("metadata.").map(|k| (i, k.to_owned())))
        .filter(|(_, k)| !k.is_empty())
        .collect();
    // The schedule of each call, when the file gives one: sent as it stands, checked by the
    // service (and here for what the file alone can tell: an instant that is not RFC 3339).
    let schedule_at: Vec<(usize, &str)> = ["notBefore", "notAfter", "timezone"]
        .into_iter()
        .filter_map(|name| column(name).map(|i| (i, name)))
        .collect();
    if let Some(unknown) = headers.iter().find(|h| {
        !matches!(
            *h,
            "to" | "scriptId" | "notBefore" | "notAfter" | "timezone"
        ) && !h.starts_with("metadata.")
    }) {
        anyhow::bail!(
            "column `{unknown}` is not to, scriptId, notBefore, notAfter, timezone or metadata.<key>"
        );
    }
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for record in reader.records() {
        let Some(record) = record_or_rejected(record, &mut rejected) else {
            continue;
        };
        let line = record.position().map_or(0, |p| p.line());
        let mut metadata = Map::new();
        for (i, key) in &metadata_at {
            if let Some(value) = record.get(*i).filter(|v| !v.is_empty()) {
                metadata.insert(key.clone(), Value::from(value));
            }
        }
        let metadata = Value::Object(metadata);
        let mut problems = Vec::new();
        let mut schedule = Map::new();
        for (i, name) in &schedule_at {
            let Some(value) = record.get(*i).filter(|v| !v.is_empty()) else {
                continue;
            };
            if *name != "timezone" && chrono::DateTime::parse_from_rfc3339(value).is_err() {
                problems.push(format!("`{name}` `{value}` is not an RFC 3339 instant"));
            }
            schedule.insert((*name).to_owned(), Value::from(value));
        }
        let script = script_at
            .and_then(|i| record.get(i))
            .filter(|s| !s.is_empty() || !campaign_script);
        let campaigns = script.is_none();
        let script = script.or(campaign_script.then_some(CAMPAIGN_SCRIPT));
        match CallPayload::parse(record.get(to_at), script, Some(&metadata)) {
            Ok(payload) if problems.is_empty() => {
                let mut call = payload.to_json();
                if let Value::Object(fields) = &mut call {
                    if campaigns {
                        fields.remove("scriptId");
                    }
                    fields.extend(schedule);
                }
                valid.push((line, call))
            }
            Ok(_) => rejected.push(Rejected {
                line,
                reason: problems.join("; "),
            }),
            Err(errors) => rejected.push(Rejected {
                line,
                reason: errors
                    .into_iter()
                    .map(|e| e.message)
                    .chain(problems)
                    .collect::<Vec<_>>()
                    .join("; "),
            }),
        }
    }
    Ok((valid, rejected))
}

/// Runs the import and prints its report; `Ok` with rejected rows still in the report.
pub async fn run(args: ImportArgs) -> anyhow::Result<ImportReport> {
    let campaign_script = match args.campaign {
        Some(id) if !args.dry_run => campaign_has_script(&args, id).await?,
        // A dry run does not ask the service: a row without a script passes here, and the
        // service refuses it if the campaign has none.
        Some(_) => true,
        None => false,
    };
    let (valid, mut rejected) = if args.suppressions {
        read_suppressions(&args.file)?
    } else {
        read_rows(&args.file, campaign_script)?
    };
    let campaign_route = args.campaign.map(|id| format!("campaigns/{id}/calls"));
    let (route, field, noun) = if args.suppressions {
        ("suppressions/batch", "suppressions", "suppressions")
    } else {
        (
            campaign_route.as_deref().unwrap_or("calls/batch"),
            "calls",
            "calls",
        )
    };
    let mut report = ImportReport {
        rows: valid.len() + rejected.len(),
        valid: valid.len(),
        ..ImportReport::default()
    };
    if !args.dry_run && !valid.is_empty() {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?;
        let bar = ProgressBar::new(valid.len() as u64).with_style(
            ProgressStyle::with_template(&format!(
                "{{prefix}} [{{bar:40.cyan/blue}}] {{pos}}/{{len}} {noun} {{msg}}"
            ))
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix("importing");
        let url = format!("{}/api/v1/{route}", args.url.trim_end_matches('/'));
        let size = usize::from(args.batch_size).min(MAX_BATCH);
        for (index, chunk) in valid.chunks(size).enumerate() {
            let items: Vec<&Value> = chunk.iter().map(|(_, item)| item).collect();
            let mut body = json!({ field: items });
            if !args.suppressions {
                // A suppressed number is one row left out and reported, not the end of the
                // import.
                body["skipSuppressed"] = json!(true);
            }
            // The same batch always carries the same key, so a batch sent again after a
            // lost answer (here, or by running the import again) is never stored twice.
            let key = batch_key(args.campaign, index, &body);
            let mut tries = 0;
            // 503s in a row: the service asks to slow down (or its database is restarting);
            // the batch is sent again, with the same key, for up to about five minutes.
            let mut busy = 0;
            let response = loop {
                tries += 1;
                let mut request = client
                    .post(&url)
                    .header("Idempotency-Key", &key)
                    .json(&body);
                if let Some(key) = &args.api_key {
                    request = request.bearer_auth(key);
                }
                match request.send().await {
                    Ok(response) => match super::busy_wait(&response) {
                        Some(wait) if busy < MAX_BUSY => {
                            busy += 1;
                            // On stderr even without a terminal (a hidden bar prints nothing).
                            bar.suspend(|| {
                                eprintln!(
                                    "batch {index}: the service is busy (503); sending it again in {wait:?}"
                                )
                            });
                            tokio::time::sleep(wait).await;
                        }
                        _ => break response,
                    },
                    Err(err) if tries < 3 && !err.is_connect() => {
                        bar.suspend(|| eprintln!("batch {index}: {err}; sending it again"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(err) => {
                        bar.abandon();
                        rejected.sort_by_key(|r| r.line);
                        report.rejected = rejected;
                        print_report(&args, &report);
                        return Err(err)
                            .with_context(|| format!("cannot reach the service at {}", args.url));
                    }
                }
            };
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                let skipped = body["skipped"].as_array().cloned().unwrap_or_default();
                for item in &skipped {
                    if let Some((line, row)) =
                        item["index"].as_u64().and_then(|i| chunk.get(i as usize))
                    {
                        rejected.push(Rejected {
                            line: *line,
                            reason: format!(
                                "`to` {} is on the suppression list: not created",
                                row["to"].as_str().unwrap_or_default()
                            ),
                        });
                    }
                }
                report.created += chunk.len() - skipped.len().min(chunk.len());
                bar.inc(chunk.len() as u64);
                continue;
            }
            // The batch is all or nothing: name the rows the service refused, and stop.
            bar.abandon();
            let details = body["error"]["details"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for detail in &details {
                if let Some((line, _)) =
                    detail["index"].as_u64().and_then(|i| chunk.get(i as usize))
                {
                    rejected.push(Rejected {
                        line: *line,
                        reason: detail["message"].as_str().unwrap_or("refused").to_owned(),
                    });
                }
            }
            // The report first: the rows refused and the calls created before are what the
            // operator needs to resume.
            rejected.sort_by_key(|r| r.line);
            report.rejected = rejected;
            print_report(&args, &report);
            anyhow::bail!(
                "the service refused the batch starting at line {} ({status}: {}); {} calls \
                 were created before it, from the lines above",
                chunk[0].0,
                body["error"]["message"].as_str().unwrap_or("no message"),
                report.created
            );
        }
        bar.finish();
    }
    rejected.sort_by_key(|r| r.line);
    report.rejected = rejected;
    print_report(&args, &report);
    Ok(report)
}

/// The Idempotency-Key of the `index`-th batch of an import: a hash of its position and of
/// the calls it holds.
/// Whether campaign `id` has a script of its own (so rows may leave theirs out); an error
/// naming the problem when the service does not know it or it takes no calls.
async fn campaign_has_script(args: &ImportArgs, id: uuid::Uuid) -> anyhow::Result<bool> {
    let url = format!("{}/api/v1/campaigns/{id}", args.url.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(30));
    if let Some(key) = &args.api_key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("cannot reach the service at {}", args.url))?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "campaign {id}: {} ({status})",
            body["error"]["message"]
                .as_str()
                .unwrap_or("refused by the service")
        );
    }
    if body["data"]["status"] == "CANCELLED" {
        anyhow::bail!("campaign {id} is CANCELLED: it takes no calls");
    }
    Ok(body["data"]["scriptId"].is_string())
}

fn batch_key(campaign: Option<uuid::Uuid>, index: usize, body: &Value) -> String {
    use sha2::{Digest, Sha256};
    // A campaign's batches name it, so one file imported into two campaigns is two imports.
    let text = match campaign {
        Some(id) => format!("{id}:{index}:{body}"),
        None => format!("{index}:{body}"),
    };
    let digest = Sha256::digest(text.as_bytes());
    format!("import-{}", hex::encode(&digest[..16]))
}

fn print_report(args: &ImportArgs, report: &ImportReport) {
    for row in &report.rejected {
        println!("line {}: {}", row.line, row.reason);
    }
    if args.dry_run {
        println!(
            "dry run: {} rows, {} valid, {} rejected; nothing was sent",
            report.rows,
            report.valid,
            report.rejected.len()
        );
    } else {
        println!(
            "{} rows: {} {}, {} rejected",
            report.rows,
            report.created,
            if args.suppressions {
                "suppressions written"
            } else {
                "calls created"
            },
            report.rejected.len()
        );
    }
}
