//! What every vendor's dialect shares: the HTTP client, bounded answers, `Retry-After`.

use std::time::Duration;

use reqwest::header;

/// The most of a provider's answer kept in `lastError`.
const MAX_ERROR_TEXT: usize = 1000;
/// The most of a provider's answer read at all: an answer is a small JSON object, and a
/// provider that sends more (broken, or hostile) must not fill the service's memory.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The client every dialect sends with: `PROVIDER_TIMEOUT` per request, no redirects.
pub(super) fn client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // A redirect would re-send the call's number and metadata to wherever the
        // provider (or whoever answers in its name) points: never followed.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("call-orchestrator/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Reads at most `max` bytes of an answer ([`MAX_ANSWER_BYTES`] for a dial's); more is an
/// error, not a truncation, since a cut JSON answer could be read as one without its id.
pub(super) async fn read_bounded(
    mut response: reqwest::Response,
    max: usize,
) -> Result<String, String> {
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(format!("answer larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|err| error_chain(&err))? {
        if body.len() + chunk.len() > max {
            return Err(format!("answer larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// How long an attempt whose outcome is unknown waits before it is sent again: 5 s, then
/// doubling with each rescue, at most 5 minutes (the attempt stays open meanwhile, until
/// an answer, its webhook or `CALL_TIMEOUT` settles it).
pub fn unknown_resend_delay(rescues: u32) -> Duration {
    Duration::from_secs(5)
        .saturating_mul(1 << rescues.min(6))
        .min(Duration::from_secs(300))
}

pub(super) fn truncate(text: &str) -> String {
    let clean: String = text.chars().filter(|c| *c != '\0').collect();
    if clean.len() <= MAX_ERROR_TEXT {
        return clean;
    }
    let mut end = MAX_ERROR_TEXT;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &clean[..end])
}

/// An error and its causes, on one line.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = header::HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
        headers.insert(
            header::RETRY_AFTER,
            later.replace("+0000", "GMT").parse().unwrap(),
        );
        let parsed = retry_after(&headers).unwrap();
        assert!(parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120));
        headers.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn long_answers_are_cut() {
        assert!(truncate(&"é".repeat(2000)).len() <= MAX_ERROR_TEXT + 3);
    }
}
