//! AWS Signature Version 4 for S3 requests ("Authenticating Requests: Using the Authorization
//! Header", AWS S3 API reference).
//!
//! ```text
//! canonical request = METHOD \n URI \n QUERY \n (name:value\n)* \n signed;names \n SHA256(payload)
//! string to sign    = "AWS4-HMAC-SHA256" \n amz-date \n date/region/s3/aws4_request \n SHA256(canonical request)
//! signing key       = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), "s3"), "aws4_request")
//! signature         = hex(HMAC(signing key, string to sign))
//! ```
//!
//! Header names are lower-cased and sorted, values trimmed; the URI's path segments are
//! percent-encoded except RFC 3986's unreserved characters (S3 encodes once, keeping `/`).
//! Checked against the GET example of AWS's documentation and against botocore's `S3SigV4Auth`
//! on the requests the collector makes (`tests/reference/gen.py`).

use ring::{digest, hmac};

/// An access key (and the session token of temporary credentials).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, in logs or errors.
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a payload (the `x-amz-content-sha256` header).
pub fn sha256_hex(payload: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, payload).as_ref())
}

/// Percent-encode every byte but RFC 3986's unreserved characters (and `/` if `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The canonical query string: names and values URI-encoded (`/` too), sorted by name then
/// value, joined by `&`; it is also the query string sent.
pub fn canonical_query(pairs: &[(&str, String)]) -> String {
    let mut enc: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// One request to sign.
pub struct Request<'a> {
    pub method: &'a str,
    /// Already URI-encoded (see [`uri_encode`]), starting with `/`.
    pub canonical_uri: &'a str,
    /// Already canonical: sorted `name=value` pairs joined by `&` (empty for none).
    pub canonical_query: &'a str,
    /// Every header to sign, `host` and `x-amz-date` included; any case and order.
    pub headers: &'a [(&'a str, &'a str)],
    pub payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`, the `x-amz-date` header's value.
    pub amz_date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// The `Authorization` header's value for `req`.
pub fn authorization(creds: &Credentials, req: &Request<'_>) -> String {
    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    headers.sort();
    let signed: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    let signed = signed.join(";");
    let mut canonical = format!(
        "{}\n{}\n{}\n",
        req.method, req.canonical_uri, req.canonical_query
    );
    for (n, v) in &headers {
        canonical.push_str(&format!("{n}:{v}\n"));
    }
    canonical.push_str(&format!("\n{signed}\n{}", req.payload_sha256));
    let date = &req.amz_date[..req.amz_date.len().min(8)];
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        sha256_hex(canonical.as_bytes())
    );
    let key = [
        date.as_bytes(),
        req.region.as_bytes(),
        req.service.as_bytes(),
        b"aws4_request",
    ]
    .iter()
    .fold(
        format!("AWS4{}", creds.secret_access_key).into_bytes(),
        |k, part| hmac_sha256(&k, part),
    );
    let signature = hex(&hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
        creds.access_key_id
    )
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time in seconds (UTC, proleptic Gregorian).
pub fn amz_date(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// The "GET Object" example of AWS's Signature Version 4 documentation for S3
    /// (`examplebucket`, `Range: bytes=0-9`, 2013-05-24).
    #[test]
    fn aws_documented_get_object_example() {
        let empty = sha256_hex(b"");
        assert_eq!(
            empty,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let auth = authorization(
            &example_creds(),
            &Request {
                method: "GET",
                canonical_uri: "/test.txt",
                canonical_query: "",
                headers: &[
                    ("Host", "examplebucket.s3.amazonaws.com"),
                    ("Range", "bytes=0-9"),
                    ("x-amz-content-sha256", &empty),
                    ("x-amz-date", "20130524T000000Z"),
                ],
                payload_sha256: &empty,
                amz_date: "20130524T000000Z",
                region: "us-east-1",
                service: "s3",
            },
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// botocore's signatures of the requests gradtel makes (PutObject, GetObject,
    /// ListObjectsV2), from `tests/reference/gen.py` (keys with `=` in them, a session token, a
    /// port in the host, query strings with `/` and `=` in their values).
    #[test]
    fn botocore_signatures_of_gradtel_requests() {
        let text = include_str!("../tests/reference/sigv4.json");
        let cases: serde_json::Value = serde_json::from_str(text).unwrap();
        let cases = cases.as_array().unwrap();
        assert!(cases.len() >= 3);
        for c in cases {
            let s = |k: &str| c[k].as_str().unwrap().to_string();
            let creds = Credentials {
                access_key_id: s("access_key_id"),
                secret_access_key: s("secret_access_key"),
                session_token: c["session_token"].as_str().map(str::to_string),
            };
            let payload = s("payload");
            let hash = sha256_hex(payload.as_bytes());
            assert_eq!(hash, s("payload_sha256"));
            let key = s("key");
            let uri = if key.is_empty() {
                format!("/{}", s("bucket"))
            } else {
                format!("/{}/{}", s("bucket"), uri_encode(&key, true))
            };
            let query: Vec<(String, String)> = c["query"]
                .as_array()
                .map(|q| {
                    q.iter()
                        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
                        .collect()
                })
                .unwrap_or_default();
            let query: Vec<(&str, String)> =
                query.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
            let query = canonical_query(&query);
            let (host, date) = (s("host"), s("amz_date"));
            let mut headers = vec![
                ("host", host.as_str()),
                ("x-amz-content-sha256", hash.as_str()),
                ("x-amz-date", date.as_str()),
            ];
            let token = creds.session_token.clone().unwrap_or_default();
            if creds.session_token.is_some() {
                headers.push(("x-amz-security-token", token.as_str()));
            }
            let auth = authorization(
                &creds,
                &Request {
                    method: &s("method"),
                    canonical_uri: &uri,
                    canonical_query: &query,
                    headers: &headers,
                    payload_sha256: &hash,
                    amz_date: &date,
                    region: &s("region"),
                    service: "s3",
                },
            );
            assert_eq!(
                auth,
                s("authorization"),
                "{} {} {query}",
                s("method"),
                s("key")
            );
        }
    }

    #[test]
    fn uri_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            uri_encode("run=a.b_c-d~/table=steps/part 1.parquet", true),
            "run%3Da.b_c-d~/table%3Dsteps/part%201.parquet"
        );
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(uri_encode("é", true), "%C3%A9");
    }

    #[test]
    fn amz_dates_match_the_calendar() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_798_761_599), "20261231T235959Z");
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let text = format!("{:?}", example_creds());
        assert!(!text.contains("wJalr"), "{text}");
    }
}
