//! Twilio's Programmable Voice (`AI_CALL_PROVIDER=twilio`): the REST API of 2010-04-01.
//!
//! A dial is `POST {url}/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls.json`, form-encoded,
//! with HTTP Basic `SID:auth token`; Twilio fetches the call's instructions from `Url`
//! (`TWILIO_TWIML_URL` with the call's `scriptId` and reference) and reports progress and
//! the end to `StatusCallback` (the webhook URL, with its reference and token), signed by
//! `X-Twilio-Signature`: base64 HMAC-SHA1, keyed with the auth token, of the public URL
//! followed by every form parameter's name and value, sorted by name.

use chrono::{DateTime, Utc};
use poem::http::HeaderMap;
use serde_json::{Value, json};

use super::{
    DialRequest, ProviderReport, Verification, WebhookError,
    signature::{same, sha1_base64},
    vendor::{
        Answered, Dialect, Http, Identified, calls_in, checked_id, header, reason, seconds,
        segment, text,
    },
};
use crate::{config::Config, domain::ProviderStatus};

pub const WEBHOOK_PATH: &str = "/api/v1/callbacks/twilio";
pub const API_URL: &str = "https://api.twilio.com";

/// The Twilio dialect.
pub struct Twilio {
    account_sid: String,
    twiml_url: String,
    from: String,
}

impl Twilio {
    pub fn from_config(config: &Config) -> Self {
        Self {
            account_sid: config.twilio_account_sid.clone().unwrap_or_default(),
            twiml_url: config.twilio_twiml_url.clone().unwrap_or_default(),
            from: super::vendor::from_number(config).unwrap_or_default(),
        }
    }

    fn calls_url(&self, http: &Http) -> String {
        http.url(&format!(
            "/2010-04-01/Accounts/{}/Calls.json",
            self.account_sid
        ))
    }

    /// `TWILIO_TWIML_URL` with the call's script and the attempt's reference.
    fn instructions_url(&self, request: &DialRequest) -> String {
        let mut url = match reqwest::Url::parse(&self.twiml_url) {
            Ok(url) => url,
            Err(_) => return self.twiml_url.clone(),
        };
        url.query_pairs_mut()
            .append_pair("scriptId", &request.script_id)
            .append_pair("ref", &request.reference());
        url.into()
    }
}

/// A status as Twilio words it (`CallStatus` of a callback, `status` of a call), with
/// `AnsweredBy`; `None` for a word Twilio does not use.
fn status(word: &str, answered_by: Option<&str>) -> Option<ProviderStatus> {
    Some(match word {
        "queued" | "initiated" => ProviderStatus::Queued,
        "ringing" => ProviderStatus::Ringing,
        "in-progress" | "answered" => ProviderStatus::InProgress,
        // Answering machine detection (`MachineDetection=Enable`) says who answered.
        "completed" => match answered_by {
            Some(who) if who.starts_with("machine") => ProviderStatus::Voicemail,
            Some("fax") => ProviderStatus::Failed,
            _ => ProviderStatus::Completed,
        },
        "busy" => ProviderStatus::Busy,
        "no-answer" => ProviderStatus::NoAnswer,
        "failed" | "canceled" => ProviderStatus::Failed,
        _ => return None,
    })
}

fn report(
    id: String,
    word: &str,
    duration: Option<&str>,
    answered_by: Option<&str>,
    body: Value,
) -> Result<ProviderReport, WebhookError> {
    let status = status(word, answered_by).ok_or_else(|| {
        WebhookError::Body(format!("`{}` is not a status Twilio reports", reason(word)))
    })?;
    let duration_sec = duration
        .and_then(|d| d.trim().parse::<f64>().ok())
        .and_then(seconds)
        .filter(|_| status == ProviderStatus::Completed || status == ProviderStatus::Voicemail);
    let why =
        (status.is_final() && status != ProviderStatus::Completed).then(|| match answered_by {
            Some(who) => format!("twilio: {word}, answered by {}", reason(who)),
            None => format!("twilio: {word}"),
        });
    Ok(ProviderReport {
        provider_call_id: id,
        status,
        duration_sec,
        reason: why,
        reference: None,
        body,
    })
}

impl Dialect for Twilio {
    const NAME: &'static str = "twilio";
    const WEBHOOK_PATH: &'static str = WEBHOOK_PATH;
    const LIST_LIMIT: usize = 100;

    fn dial(&self, http: &Http, request: &DialRequest) -> reqwest::RequestBuilder {
        let instructions = self.instructions_url(request);
        // `StatusCallbackEvent` repeats, once per event.
        let form: Vec<(&str, &str)> = vec![
            ("To", &request.to),
            ("From", &self.from),
            ("Url", &instructions),
            ("StatusCallback", &request.webhook_url),
            ("StatusCallbackMethod", "POST"),
            ("StatusCallbackEvent", "initiated"),
            ("StatusCallbackEvent", "ringing"),
            ("StatusCallbackEvent", "answered"),
            ("StatusCallbackEvent", "completed"),
            ("MachineDetection", "Enable"),
        ];
        http.client
            .post(self.calls_url(http))
            .basic_auth(&self.account_sid, Some(http.key.expose()))
            .header("accept", "application/json")
            .form(&form)
    }

    fn answer(&self, answer: &Value) -> Answered {
        Answered::Accepted(text(answer, "sid").map(str::to_owned))
    }

    fn is_rate_limit(&self, status: reqwest::StatusCode, text: &str) -> bool {
        // 20429: too many requests at once; 10004: the account's concurrent calls.
        let code = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_i64));
        status == reqwest::StatusCode::TOO_MANY_REQUESTS || matches!(code, Some(20429 | 10004))
    }

    fn verify(
        &self,
        http: &Http,
        public_url: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Verification {
        let token = http.key.expose().as_bytes();
        // An empty key (or no public URL) would let anyone sign: nothing is taken then.
        let Some(given) = header(headers, "x-twilio-signature")
            .filter(|_| !token.is_empty() && !http.webhook_base.is_empty())
        else {
            return Verification::Refused;
        };
        let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        params.sort();
        params.dedup();
        let signed_over = |url: &str| {
            let mut parts: Vec<&[u8]> = vec![url.as_bytes()];
            for (name, value) in &params {
                parts.push(name.as_bytes());
                parts.push(value.as_bytes());
            }
            sha1_base64(token, &parts)
        };
        // Twilio signs the URL as it requested it, with or without the default port.
        let valid = url_forms(public_url)
            .iter()
            .any(|url| same(&signed_over(url), given.trim()));
        if !valid {
            return Verification::Refused;
        }
        Verification::Signed {
            webhook_id: header(headers, "i-twilio-idempotency-token")
                .filter(|id| !id.is_empty() && id.len() <= 255)
                .map(str::to_owned),
        }
    }

    fn proof(&self) -> &'static str {
        "signed by Twilio (X-Twilio-Signature, keyed with the auth token)"
    }

    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError> {
        let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let get = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let id = checked_id(get("CallSid"))?;
        let word = get("CallStatus")
            .ok_or_else(|| WebhookError::Body("`CallStatus` is missing".into()))?;
        let mut echo = json!({"CallSid": id, "CallStatus": reason(word)});
        for key in ["CallDuration", "AnsweredBy", "SequenceNumber", "Timestamp"] {
            if let Some(value) = get(key) {
                echo[key] = reason(value).into();
            }
        }
        report(
            id.clone(),
            word,
            get("CallDuration"),
            get("AnsweredBy"),
            echo,
        )
    }

    fn look_up(&self, http: &Http, provider_call_id: &str) -> reqwest::RequestBuilder {
        http.client
            .get(http.url(&format!(
                "/2010-04-01/Accounts/{}/Calls/{}.json",
                self.account_sid,
                segment(provider_call_id)
            )))
            .basic_auth(&self.account_sid, Some(http.key.expose()))
    }

    fn read_call(&self, call: &Value) -> Option<ProviderReport> {
        let id = checked_id(text(call, "sid")).ok()?;
        let word = text(call, "status")?;
        let echo = json!({
            "sid": id,
            "status": reason(word),
            "duration": text(call, "duration"),
            "answered_by": text(call, "answered_by"),
        });
        report(
            id.clone(),
            word,
            text(call, "duration"),
            text(call, "answered_by"),
            echo,
        )
        .ok()
    }

    fn list(
        &self,
        http: &Http,
        request: &DialRequest,
        since: DateTime<Utc>,
    ) -> reqwest::RequestBuilder {
        // `start_time` stays empty while a call waits in Twilio's queue: filtered by
        // `date_created` here instead (see `identify`).
        let _ = since;
        http.client
            .get(self.calls_url(http))
            .basic_auth(&self.account_sid, Some(http.key.expose()))
            .query(&[
                ("To", request.to.as_str()),
                ("From", self.from.as_str()),
                ("PageSize", "100"),
            ])
    }

    fn listed<'v>(&self, answer: &'v Value) -> Vec<&'v Value> {
        calls_in(answer, "calls")
    }

    /// Twilio keeps no metadata: the attempt's call is the first one created to its number
    /// since the attempt was claimed (10 s of clock margin) that is no other attempt's (the
    /// service never has two calls to one number in progress at once).
    fn identify(
        &self,
        request: &DialRequest,
        since: DateTime<Utc>,
        listed: &[&Value],
    ) -> Identified {
        let since = since.max(request.claimed_at - chrono::Duration::seconds(10));
        listed
            .iter()
            .filter(|call| text(call, "to") == Some(request.to.as_str()))
            .filter(|call| text(call, "direction").is_none_or(|d| d == "outbound-api"))
            .filter(|call| {
                text(call, "sid")
                    .is_some_and(|sid| !request.known_provider_ids.iter().any(|k| k == sid))
            })
            .filter_map(|call| {
                let created = DateTime::parse_from_rfc2822(text(call, "date_created")?).ok()?;
                let sid = text(call, "sid")?.to_owned();
                (created >= since).then_some((created, sid))
            })
            .min()
            .map_or(Identified::None, |(_, sid)| Identified::Found(sid))
    }
}

/// The public URL as given, and with the default port added or removed, as Twilio's own
/// validator tries them.
fn url_forms(public_url: &str) -> Vec<String> {
    let mut forms = vec![public_url.to_owned()];
    if let Ok(mut url) = reqwest::Url::parse(public_url) {
        match (url.port(), url.port_or_known_default()) {
            (Some(_), _) => {
                let _ = url.set_port(None);
                forms.push(url.to_string());
            }
            (None, Some(default)) => {
                // `Url` drops a default port it is given: written out by hand.
                let host = url.host_str().unwrap_or_default().to_owned();
                let with_port = public_url.replacen(&host, &format!("{host}:{default}"), 1);
                forms.push(with_port);
            }
            (None, None) => {}
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    /// twilio-python's own test vector (tests/unit/test_request_validator.py).
    #[test]
    fn signs_as_twilio_python_does() {
        let params = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
        let mut parsed: Vec<(String, String)> = form_urlencoded::parse(params.as_bytes())
            .into_owned()
            .collect();
        parsed.sort();
        let mut parts: Vec<&[u8]> = vec![b"https://mycompany.com/myapp.php?foo=1&bar=2"];
        for (k, v) in &parsed {
            parts.push(k.as_bytes());
            parts.push(v.as_bytes());
        }
        assert_eq!(
            sha1_base64(b"12345", &parts),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_eq!(
            url_forms("https://mycompany.com/myapp.php?foo=1&bar=2"),
            [
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                "https://mycompany.com:443/myapp.php?foo=1&bar=2"
            ]
        );
        assert_eq!(
            url_forms("http://h.example:8080/p?q=1"),
            ["http://h.example:8080/p?q=1", "http://h.example/p?q=1"]
        );
    }

    #[test]
    fn statuses_follow_the_mapping() {
        use ProviderStatus as P;
        for (word, answered_by, expected) in [
            ("queued", None, P::Queued),
            ("initiated", None, P::Queued),
            ("ringing", None, P::Ringing),
            ("in-progress", None, P::InProgress),
            ("completed", None, P::Completed),
            ("completed", Some("human"), P::Completed),
            ("completed", Some("unknown"), P::Completed),
            ("completed", Some("machine_start"), P::Voicemail),
            ("completed", Some("machine_end_beep"), P::Voicemail),
            ("completed", Some("fax"), P::Failed),
            ("busy", None, P::Busy),
            ("no-answer", None, P::NoAnswer),
            ("failed", None, P::Failed),
            ("canceled", None, P::Failed),
        ] {
            assert_eq!(
                status(word, answered_by),
                Some(expected),
                "{word} {answered_by:?}"
            );
        }
        assert_eq!(status("exploded", None), None);
    }

    #[test]
    fn a_status_callback_is_read() {
        let twilio = Twilio {
            account_sid: "AC1".into(),
            twiml_url: "https://x.example/twiml".into(),
            from: "+15550000000".into(),
        };
        let report = twilio
            .read_webhook(
                b"CallSid=CA0123&CallStatus=completed&CallDuration=49&AnsweredBy=human&Duration=1",
            )
            .unwrap();
        assert_eq!(report.provider_call_id, "CA0123");
        assert_eq!(report.status, ProviderStatus::Completed);
        assert_eq!(report.duration_sec, Some(49));
        assert!(twilio.read_webhook(b"CallStatus=completed").is_err());
        assert!(matches!(
            twilio.read_webhook(b"CallSid=CA1&CallStatus=melted"),
            Err(WebhookError::Body(_))
        ));
        assert!(
            twilio
                .read_webhook(b"CallSid=CA%0A1&CallStatus=busy")
                .is_err()
        );
    }
}
