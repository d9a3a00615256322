//! Tests for SigV4: official vectors (PROTOCOLS.md §1.3, §5 V1/V2 and the aws-c-auth /
//! aws-sigv4 signing test suite), round trips between aws-sigv4 and our verifier, and every
//! refusal with its AWS error code.

use time::OffsetDateTime;

use super::*;

const AKID: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// 2015-08-30T12:36:00Z, the suite's time.
const VECTOR_TIME: OffsetDateTime = utc(1_440_938_160);
const V1_SIGNATURE: &str = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
const V2_SIGNATURE: &str = "e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d";

/// V1: get-vanilla signed in the Authorization header.
const V1_REQUEST: &str = "GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

";

/// V2: get-vanilla pre-signed with X-Amz-Expires=3600.
const V2_REQUEST: &str = "GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

";

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// A request parsed from the test suite's text form.
#[derive(Clone, Debug)]
struct Http {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http {
    /// Parses `METHOD target HTTP/1.1`, `Name:value` lines (continuation lines folded into
    /// the previous value with one space, as an HTTP parser unfolds them), a blank line and
    /// the body.
    fn parse(text: &str) -> Http {
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let request_line = lines.next().expect("request line");
        let (method, rest) = request_line.split_once(' ').expect("method");
        let target = rest.strip_suffix(" HTTP/1.1").unwrap_or(rest);
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                let last = headers.last_mut().expect("continuation of a header");
                last.1.push(' ');
                last.1.push_str(line.trim_start());
            } else {
                let (name, value) = line.split_once(':').expect("header line");
                headers.push((name.to_string(), value.to_string()));
            }
        }
        Http {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    /// A request to `url` (absolute; path and query as on the wire) with these headers.
    #[cfg_attr(not(feature = "aws"), allow(dead_code))]
    fn from_url(method: &str, url: &str, headers: Vec<(String, String)>, body: &[u8]) -> Http {
        let rest = url.split_once("://").expect("absolute URL").1;
        let (host, target) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let path = if path.is_empty() { "/" } else { path };
        let mut headers = headers;
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            headers.insert(0, ("Host".into(), host.into()));
        }
        Http {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            headers,
            body: body.to_vec(),
        }
    }

    fn request(&self) -> SignedRequest<'_> {
        SignedRequest {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }

    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.into(), value.into()));
    }
}

const fn utc(unix: i64) -> OffsetDateTime {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => t,
        Err(_) => panic!("timestamp out of range"),
    }
}

fn example_verifier() -> Verifier {
    Verifier::with_credentials(
        "us-east-1",
        ["service"],
        [AwsCredentials::new(AKID, SECRET)],
    )
}

fn verify_at(
    verifier: &Verifier,
    http: &Http,
    now: OffsetDateTime,
) -> Result<Verified, SigV4Error> {
    verifier.verify(&http.request(), now)
}

/// Replaces byte `i` of `s` with a character that changes its meaning (never a case change,
/// and never `.`/`/`, which path normalization could absorb).
fn mutate_at(s: &str, i: usize) -> String {
    let mut bytes = s.as_bytes().to_vec();
    bytes[i] = if bytes[i] == b'Z' || bytes[i] == b'z' {
        b'q'
    } else {
        b'Z'
    };
    String::from_utf8(bytes).expect("ASCII")
}

/// Every single-byte change to the method, path, query, header names and values and body
/// of `http` is refused.
fn assert_every_byte_matters(verifier: &Verifier, http: &Http, now: OffsetDateTime) {
    let mut tried = 0;
    let mut refuse = |changed: Http, what: &str| {
        tried += 1;
        assert!(
            verifier.verify(&changed.request(), now).is_err(),
            "a change to {what} was accepted: {changed:?} / {:?}",
            changed.query
        );
    };
    for i in 0..http.method.len() {
        let mut c = http.clone();
        c.method = mutate_at(&http.method, i);
        refuse(c, "the method");
    }
    for i in 0..http.path.len() {
        let mut c = http.clone();
        c.path = mutate_at(&http.path, i);
        refuse(c, "the path");
    }
    for i in 0..http.query.len() {
        let mut c = http.clone();
        c.query = mutate_at(&http.query, i);
        refuse(c, "the query");
    }
    for (h, (name, value)) in http.headers.iter().enumerate() {
        for i in 0..name.len() {
            let mut c = http.clone();
            c.headers[h].0 = mutate_at(name, i);
            refuse(c, "a header name");
        }
        for i in 0..value.len() {
            let mut c = http.clone();
            c.headers[h].1 = mutate_at(value, i);
            refuse(c, "a header value");
        }
    }
    for i in 0..http.body.len() {
        let mut c = http.clone();
        c.body[i] ^= 0x01;
        refuse(c, "the body");
    }
    assert!(tried > 100, "only {tried} mutations");
}

// ------------------------------------------------------------------------------------------
// Pure helpers against the official vectors
// ------------------------------------------------------------------------------------------

#[test]
fn signing_key_matches_the_aws_documentation_example() {
    // The key-derivation example in AWS's SigV4 documentation (20150830/us-east-1/iam),
    // recomputed independently with Python's hmac module.
    assert_eq!(
        hex(&signing_key(SECRET, "20150830", "us-east-1", "iam")),
        "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    );
}

#[test]
fn canonical_request_and_string_to_sign_of_get_vanilla() {
    let http = Http::parse(V1_REQUEST);
    let creq = canonical_request(
        "GET",
        "/",
        "",
        &http.headers,
        "host;x-amz-date",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    )
    .unwrap();
    assert_eq!(
        creq,
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
         e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let sts = string_to_sign(
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
        &creq,
    );
    assert_eq!(
        sts,
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
         bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
    let key = signing_key(SECRET, "20150830", "us-east-1", "service");
    assert_eq!(hex(&hmac_sha256(&key, sts.as_bytes())), V1_SIGNATURE);
}

#[test]
fn canonical_forms_of_suite_requests() {
    // header-canonical-request.txt of get-header-value-multiline, get-space-normalized and
    // get-utf8; query-canonical-request.txt of get-vanilla-query-order-encoded.
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let headers = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut h = vec![
            ("Host".to_string(), "example.amazonaws.com".to_string()),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ];
        h.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        h
    };
    assert_eq!(
        canonical_request(
            "GET",
            "/",
            "",
            &headers(&[("My-Header1", "value1   value2     value3")]),
            "host;my-header1;x-amz-date",
            empty
        )
        .unwrap(),
        format!(
            "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1 value2 value3\n\
             x-amz-date:20150830T123600Z\n\nhost;my-header1;x-amz-date\n{empty}"
        )
    );
    assert_eq!(canonical_uri("/example space/"), "/example%20space/");
    assert_eq!(canonical_uri("/ሴ"), "/%E1%88%B4");
    assert_eq!(
        canonical_query(
            "Param-3=Value3&Param=Value2&%E1%88%B4=Value1&X-Amz-Algorithm=AWS4-HMAC-SHA256\
             &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
             &X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600"
        ),
        "%E1%88%B4=Value1&Param=Value2&Param-3=Value3&X-Amz-Algorithm=AWS4-HMAC-SHA256\
         &X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request\
         &X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    );
}

#[test]
fn path_normalization_and_double_encoding() {
    for (raw, canonical) in [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/./", "/"),
        ("/./example", "/example"),
        ("/example/..", "/"),
        ("/example1/example2/../..", "/"),
        ("//example//", "/example/"),
        ("/a/b/../c/.", "/a/c/"),
        ("/../../a", "/a"),
        ("/a%20b/%E2%9C%93", "/a%2520b/%25E2%259C%2593"),
        (
            "/2015-03-31/functions/arn%3Aaws%3Alambda/invocations",
            "/2015-03-31/functions/arn%253Aaws%253Alambda/invocations",
        ),
        (
            "/test/@connections/JBDvjfGEIAMCERw%3D",
            "/test/%40connections/JBDvjfGEIAMCERw%253D",
        ),
        ("/-._~09AZaz", "/-._~09AZaz"),
    ] {
        assert_eq!(canonical_uri(raw), canonical, "{raw:?}");
    }
}

#[test]
fn query_canonicalization_rules() {
    assert_eq!(canonical_query(""), "");
    assert_eq!(canonical_query("b=2&a=1"), "a=1&b=2");
    // Same name: sorted by value. A name without `=` has an empty value. Empty pieces vanish.
    assert_eq!(canonical_query("a=2&&a=1&flag"), "a=1&a=2&flag=");
    // `+` is a space; reserved characters are encoded; case of hex is normalized.
    assert_eq!(canonical_query("q=a+b%2bc%2fd"), "q=a%20b%2Bc%2Fd");
    assert_eq!(canonical_query("k=%e2%9c%93"), "k=%E2%9C%93");
    // An invalid escape stays literal (and its `%` is encoded).
    assert_eq!(canonical_query("k=%zz"), "k=%25zz");
    // Sorting is on the encoded form.
    assert_eq!(canonical_query("a_b=1&a-b=2&A=3"), "A=3&a-b=2&a_b=1");
}

#[test]
fn amz_dates_parse_and_print() {
    assert_eq!(parse_amz_date("20150830T123600Z"), Some(VECTOR_TIME));
    assert_eq!(amz_date(&VECTOR_TIME), "20150830T123600Z");
    for bad in [
        "",
        "20150830T123600",
        "20150830 123600Z",
        "20151330T123600Z",
        "2015083OT123600Z",
        "20150830T246000Z",
    ] {
        assert_eq!(parse_amz_date(bad), None, "{bad:?}");
    }
}

// ------------------------------------------------------------------------------------------
// V1 / V2 through the verifier
// ------------------------------------------------------------------------------------------

#[test]
fn v1_header_vector_verifies() {
    let verified = verify_at(&example_verifier(), &Http::parse(V1_REQUEST), VECTOR_TIME).unwrap();
    assert_eq!(
        verified,
        Verified {
            access_key_id: AKID.into(),
            region: "us-east-1".into(),
            service: "service".into(),
            signed_at: VECTOR_TIME,
            payload_signed: true,
        }
    );
}

#[test]
fn v2_presigned_vector_verifies() {
    let http = Http::parse(V2_REQUEST);
    let verified = verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
    assert_eq!(verified.access_key_id, AKID);
    assert_eq!(verified.signed_at, VECTOR_TIME);
    assert!(http.query.contains(V2_SIGNATURE));
}

#[test]
fn v1_refused_with_any_single_byte_changed() {
    assert_every_byte_matters(&example_verifier(), &Http::parse(V1_REQUEST), VECTOR_TIME);
}

#[test]
fn v2_refused_with_any_single_byte_changed() {
    assert_every_byte_matters(&example_verifier(), &Http::parse(V2_REQUEST), VECTOR_TIME);
}

// ------------------------------------------------------------------------------------------
// The official signing test suite (normalize = true cases), header and query forms
// ------------------------------------------------------------------------------------------

struct SuiteCase {
    name: &'static str,
    token: Option<&'static str>,
    omit_session_token: bool,
    header_signed: &'static str,
    query_signed: &'static str,
}

fn suite_verifier(case: &SuiteCase) -> Verifier {
    let mut creds = AwsCredentials::new(AKID, SECRET);
    if let Some(token) = case.token {
        creds = creds.with_session_token(token);
    }
    Verifier::with_credentials("us-east-1", ["service"], [creds])
        .security_token_unsigned(case.omit_session_token)
}

#[test]
fn official_suite_header_signed_requests_verify() {
    for case in SUITE {
        let http = Http::parse(case.header_signed);
        verify_at(&suite_verifier(case), &http, VECTOR_TIME)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
}

#[test]
fn official_suite_presigned_requests_verify() {
    for case in SUITE {
        let http = Http::parse(case.query_signed);
        verify_at(&suite_verifier(case), &http, VECTOR_TIME)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    }
}

#[test]
fn official_suite_requests_refused_with_a_changed_signature() {
    for case in SUITE {
        for text in [case.header_signed, case.query_signed] {
            let at = text.find("Signature=").expect("a signature") + "Signature=".len() + 7;
            let http = Http::parse(&mutate_at(text, at));
            assert_eq!(
                verify_at(&suite_verifier(case), &http, VECTOR_TIME).unwrap_err(),
                SigV4Error::SignatureDoesNotMatch,
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn suite_token_outside_the_signature_needs_the_iot_setting() {
    // post-sts-header-after's pre-signed form carries X-Amz-Security-Token outside the
    // signature; a standard verifier (token signed) refuses it.
    let case = SUITE
        .iter()
        .find(|c| c.name == "post-sts-header-after")
        .unwrap();
    let http = Http::parse(case.query_signed);
    let standard = Verifier::with_credentials(
        "us-east-1",
        ["service"],
        [AwsCredentials::new(AKID, SECRET).with_session_token(case.token.unwrap())],
    );
    assert_eq!(
        verify_at(&standard, &http, VECTOR_TIME).unwrap_err(),
        SigV4Error::SignatureDoesNotMatch
    );
    verify_at(&standard.security_token_unsigned(true), &http, VECTOR_TIME).unwrap();
}

#[test]
fn suite_double_url_encode_lambda_vector_verifies() {
    // aws-sigv4's "double-url-encode" case (Lambda, us-east-2, 2021-05-11).
    let http = Http::parse(
        "POST /2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-west-2%3A892717189312%3Afunction%3Amy-rusty-fun/invocations
Host:lambda.us-east-2.amazonaws.com
X-Amz-Date:20210511T154045Z
Authorization: AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20210511/us-east-2/lambda/aws4_request, SignedHeaders=host;x-amz-date, Signature=4b93abbcc68be32bd64c18e2c71150660ab4c29bbd6c32a383a7517a88fc1804

",
    );
    let verifier =
        Verifier::with_credentials("us-east-2", ["lambda"], [AwsCredentials::new(AKID, SECRET)]);
    verify_at(&verifier, &http, utc(1_620_747_645)).unwrap();
}

// ------------------------------------------------------------------------------------------
// Refusals, each with its AWS error code
// ------------------------------------------------------------------------------------------

fn refusal(http: &Http) -> SigV4Error {
    verify_at(&example_verifier(), http, VECTOR_TIME).unwrap_err()
}

#[test]
fn missing_authentication() {
    let mut http = Http::parse(V1_REQUEST);
    http.headers.retain(|(n, _)| n != "Authorization");
    let e = refusal(&http);
    assert_eq!(e, SigV4Error::MissingAuthenticationToken);
    assert_eq!(
        (e.code(), e.json_code(), e.http_status()),
        (
            "MissingAuthenticationToken",
            "MissingAuthenticationTokenException",
            403
        )
    );

    // A query with some X-Amz-* parameters but no X-Amz-Signature is not signed.
    let http = Http::parse(&V2_REQUEST.replace("&X-Amz-Signature=", "&X-Amz-Unrelated="));
    assert_eq!(refusal(&http), SigV4Error::MissingAuthenticationToken);
}

#[test]
fn malformed_authorization_is_an_incomplete_signature() {
    let good = Http::parse(V1_REQUEST)
        .headers
        .iter()
        .find(|(n, _)| n == "Authorization")
        .unwrap()
        .1
        .clone();
    let sig = format!("Signature={V1_SIGNATURE}");
    let cases = [
        String::new(),
        "AWS4-HMAC-SHA256".to_string(),
        good.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"),
        good.replace("AWS4-HMAC-SHA256 ", "AWS "),
        good.replace(&format!(", {sig}"), ""),
        good.replace("SignedHeaders=host;x-amz-date, ", ""),
        good.replace("Credential=", "Credentials="),
        good.replace("/aws4_request", "/aws5_request"),
        good.replace("/20150830/", "/2015083/"),
        good.replace("AKIDEXAMPLE/", "/"),
        good.replace("/us-east-1/service", "/us-east-1"),
        good.replace(", Signature", "; Signature"),
        format!("{good}, {sig}"),
        good.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=x-amz-date"),
        good.replace(
            "SignedHeaders=host;x-amz-date",
            "SignedHeaders=host;;x-amz-date",
        ),
        good.replace(
            "SignedHeaders=host;x-amz-date",
            "SignedHeaders=host;x-amz-date;my-header",
        ),
    ];
    for value in cases {
        let mut http = Http::parse(V1_REQUEST);
        http.set_header("Authorization", &value);
        let e = refusal(&http);
        assert!(
            matches!(e, SigV4Error::IncompleteSignature(_)),
            "{value:?}: {e:?}"
        );
        assert_eq!(
            (e.code(), e.json_code(), e.http_status()),
            ("IncompleteSignature", "IncompleteSignatureException", 400)
        );
    }

    // No X-Amz-Date, or an unparsable one.
    let mut http = Http::parse(V1_REQUEST);
    http.headers.retain(|(n, _)| n != "X-Amz-Date");
    assert!(matches!(refusal(&http), SigV4Error::IncompleteSignature(_)));
    http.set_header("X-Amz-Date", "2015-08-30T12:36:00Z");
    assert!(matches!(refusal(&http), SigV4Error::IncompleteSignature(_)));

    // Two Authorization headers; Authorization and a pre-signed query together.
    let mut http = Http::parse(V1_REQUEST);
    http.headers.push(("authorization".into(), good.clone()));
    assert!(matches!(refusal(&http), SigV4Error::IncompleteSignature(_)));
    let mut http = Http::parse(V2_REQUEST);
    http.headers.push(("Authorization".into(), good));
    assert!(matches!(refusal(&http), SigV4Error::IncompleteSignature(_)));
}

#[test]
fn malformed_presigned_query_is_an_incomplete_signature() {
    for (from, to) in [
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""),
        (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Algorithm=AWS4-HMAC-SHA1",
        ),
        ("X-Amz-SignedHeaders=host&", ""),
        ("X-Amz-Date=20150830T123600Z&", ""),
        ("X-Amz-Expires=3600", "X-Amz-Expires=-1"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
        (
            "X-Amz-Expires=3600",
            "X-Amz-Expires=3600&X-Amz-Expires=3600",
        ),
        (
            "X-Amz-Credential=AKIDEXAMPLE%2F",
            "X-Amz-Credential=AKIDEXAMPLE%2Fx%2F",
        ),
        ("X-Amz-Credential=AKIDEXAMPLE%2F", "X-Amz-Credential=%FF%2F"),
    ] {
        let http = Http::parse(&V2_REQUEST.replace(from, to));
        let e = refusal(&http);
        assert!(
            matches!(e, SigV4Error::IncompleteSignature(_)),
            "{to:?}: {e:?}"
        );
        assert_eq!(e.code(), "IncompleteSignature");
    }
}

#[test]
fn wrong_secret_is_a_signature_mismatch() {
    let verifier = Verifier::with_credentials(
        "us-east-1",
        ["service"],
        [AwsCredentials::new(
            AKID,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ",
        )],
    );
    for text in [V1_REQUEST, V2_REQUEST] {
        let e = verify_at(&verifier, &Http::parse(text), VECTOR_TIME).unwrap_err();
        assert_eq!(e, SigV4Error::SignatureDoesNotMatch);
        assert_eq!(
            (e.code(), e.json_code(), e.http_status()),
            ("SignatureDoesNotMatch", "InvalidSignatureException", 403)
        );
    }
}

#[test]
fn malformed_signature_hex_is_a_mismatch() {
    for sig in [
        "",
        "5fa00f",
        &V1_SIGNATURE.to_uppercase().replace('F', "G"),
        &format!("{V1_SIGNATURE}00"),
    ] {
        let http = Http::parse(&V1_REQUEST.replace(V1_SIGNATURE, sig));
        assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch, "{sig:?}");
    }
    // Upper-case hex is the same signature.
    let http = Http::parse(&V1_REQUEST.replace(V1_SIGNATURE, &V1_SIGNATURE.to_uppercase()));
    verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
}

#[test]
fn unknown_access_key() {
    let verifier = Verifier::with_credentials(
        "us-east-1",
        ["service"],
        [AwsCredentials::new("AKIDOTHER", SECRET)],
    );
    for text in [V1_REQUEST, V2_REQUEST] {
        let e = verify_at(&verifier, &Http::parse(text), VECTOR_TIME).unwrap_err();
        assert_eq!(e, SigV4Error::UnknownAccessKey(AKID.into()));
        assert_eq!(
            (e.code(), e.json_code(), e.http_status()),
            ("InvalidClientTokenId", "UnrecognizedClientException", 403)
        );
    }
    // A lookup that knows nobody.
    let nobody = Verifier::new("us-east-1", ["service"], |_| None);
    assert!(matches!(
        nobody.verify(&Http::parse(V1_REQUEST).request(), VECTOR_TIME),
        Err(SigV4Error::UnknownAccessKey(_))
    ));
}

#[test]
fn wrong_region_or_service_is_refused() {
    let creds = || [AwsCredentials::new(AKID, SECRET)];
    for verifier in [
        Verifier::with_credentials("us-west-2", ["service"], creds()),
        Verifier::with_credentials("us-east-1", ["iot"], creds()),
        Verifier::with_credentials("us-east-1", Vec::<String>::new(), creds()),
    ] {
        for text in [V1_REQUEST, V2_REQUEST] {
            let e = verify_at(&verifier, &Http::parse(text), VECTOR_TIME).unwrap_err();
            assert!(
                matches!(e, SigV4Error::InvalidScope(_)),
                "{verifier:?}: {e:?}"
            );
            assert_eq!(
                (e.code(), e.json_code(), e.http_status()),
                ("SignatureDoesNotMatch", "InvalidSignatureException", 403)
            );
        }
    }
    // Several services accepted: any of them.
    let verifier = Verifier::with_credentials("us-east-1", ["iotdata", "service"], creds());
    verify_at(&verifier, &Http::parse(V1_REQUEST), VECTOR_TIME).unwrap();
    // A scope date that is not X-Amz-Date's.
    let http = Http::parse(&V1_REQUEST.replace("AKIDEXAMPLE/20150830", "AKIDEXAMPLE/20150831"));
    assert!(matches!(refusal(&http), SigV4Error::InvalidScope(_)));
}

#[test]
fn tampered_requests_are_refused() {
    // A header that is not signed may change; a signed one may not.
    let mut http = Http::parse(V1_REQUEST);
    http.headers.push(("User-Agent".into(), "curl".into()));
    verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
    http.set_header("Host", "example.amazonaws.com.evil");
    assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch);
    // A signed header repeated.
    let mut http = Http::parse(V1_REQUEST);
    http.headers.push(("host".into(), "other".into()));
    assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch);
    // A body added to a request signed without one.
    let mut http = Http::parse(V1_REQUEST);
    http.body = b"{}".to_vec();
    assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch);
    // A query parameter added, to either form.
    for text in [V1_REQUEST, V2_REQUEST] {
        let mut http = Http::parse(text);
        http.query = if http.query.is_empty() {
            "a=1".into()
        } else {
            format!("{}&a=1", http.query)
        };
        assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch);
    }
    // A different method or path.
    let mut http = Http::parse(V1_REQUEST);
    http.method = "POST".into();
    assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch);
    let mut http = Http::parse(V1_REQUEST);
    http.path = "/mqtt".into();
    assert_eq!(refusal(&http), SigV4Error::SignatureDoesNotMatch);
}

#[test]
fn content_sha256_header_rules() {
    // post-x-www-form-urlencoded signs x-amz-content-sha256; a different body is refused
    // before the signature is even computed.
    let case = SUITE
        .iter()
        .find(|c| c.name == "post-x-www-form-urlencoded")
        .unwrap();
    let mut http = Http::parse(case.header_signed);
    verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
    http.body = b"Param1=value2".to_vec();
    let e = refusal(&http);
    assert_eq!(e, SigV4Error::ContentSha256Mismatch);
    assert_eq!(
        (e.code(), e.http_status()),
        ("XAmzContentSHA256Mismatch", 400)
    );

    // A streaming or bogus payload hash is not supported.
    let mut http = Http::parse(case.header_signed);
    http.set_header("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD");
    assert!(matches!(refusal(&http), SigV4Error::IncompleteSignature(_)));

    // UNSIGNED-PAYLOAD, when declared, is used as the payload hash and reported.
    let mut http = Http::parse(V1_REQUEST);
    http.set_header("x-amz-content-sha256", UNSIGNED_PAYLOAD);
    let creq = canonical_request(
        "GET",
        "/",
        "",
        &http.headers,
        "host;x-amz-content-sha256;x-amz-date",
        UNSIGNED_PAYLOAD,
    )
    .unwrap();
    let sts = string_to_sign(
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
        &creq,
    );
    let sig = hex(&hmac_sha256(
        &signing_key(SECRET, "20150830", "us-east-1", "service"),
        sts.as_bytes(),
    ));
    http.set_header(
        "Authorization",
        &format!("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature={sig}"),
    );
    http.body = b"anything".to_vec();
    let verified = verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
    assert!(!verified.payload_signed);
}

#[test]
fn clock_skew_for_header_signatures() {
    let verifier = example_verifier();
    let http = Http::parse(V1_REQUEST);
    for secs in [-300, -1, 0, 1, 300] {
        verify_at(
            &verifier,
            &http,
            VECTOR_TIME + time::Duration::seconds(secs),
        )
        .unwrap_or_else(|e| panic!("{secs}: {e}"));
    }
    for secs in [-301, 301, -86_400, 86_400] {
        let now = VECTOR_TIME + time::Duration::seconds(secs);
        let e = verify_at(&verifier, &http, now).unwrap_err();
        assert_eq!(
            e,
            SigV4Error::RequestExpired {
                signed_at: VECTOR_TIME,
                now,
                max_skew_secs: 300
            }
        );
        assert_eq!(
            (e.code(), e.json_code(), e.http_status()),
            ("RequestExpired", "InvalidSignatureException", 403)
        );
        assert!(matches!(crate::Error::from(e), crate::Error::Expired(_)));
    }
    // A verifier with a tighter skew.
    let tight = example_verifier().max_skew(Duration::from_secs(60));
    assert!(verify_at(&tight, &http, VECTOR_TIME + time::Duration::seconds(61)).is_err());
    verify_at(&tight, &http, VECTOR_TIME + time::Duration::seconds(60)).unwrap();
}

#[test]
fn presigned_expiry() {
    let verifier = example_verifier();
    let http = Http::parse(V2_REQUEST);
    for secs in [-300, 0, 301, 3599, 3600] {
        verify_at(
            &verifier,
            &http,
            VECTOR_TIME + time::Duration::seconds(secs),
        )
        .unwrap_or_else(|e| panic!("{secs}: {e}"));
    }
    let now = VECTOR_TIME + time::Duration::seconds(3601);
    let e = verify_at(&verifier, &http, now).unwrap_err();
    assert_eq!(
        e,
        SigV4Error::PresignExpired {
            expired_at: VECTOR_TIME + time::Duration::seconds(3600),
            now
        }
    );
    assert_eq!(e.code(), "RequestExpired");
    assert!(e.to_string().contains("20150830T133600Z"), "{e}");
    // Signed too far in the future.
    assert!(matches!(
        verify_at(&verifier, &http, VECTOR_TIME - time::Duration::seconds(301)),
        Err(SigV4Error::RequestExpired { .. })
    ));
}

#[test]
fn session_token_must_match_the_credentials() {
    let case = SUITE
        .iter()
        .find(|c| c.name == "get-vanilla-with-session-token")
        .unwrap();
    let token = case.token.unwrap();
    for text in [case.header_signed, case.query_signed] {
        let http = Http::parse(text);
        // Credentials with that token: accepted (signed mode).
        verify_at(&suite_verifier(case), &http, VECTOR_TIME).unwrap();
        // Credentials with another token, or none: refused before the signature.
        for creds in [
            AwsCredentials::new(AKID, SECRET).with_session_token(format!("{token}x")),
            AwsCredentials::new(AKID, SECRET),
        ] {
            let verifier = Verifier::with_credentials("us-east-1", ["service"], [creds]);
            let e = verify_at(&verifier, &http, VECTOR_TIME).unwrap_err();
            assert_eq!(e, SigV4Error::InvalidSecurityToken);
            assert_eq!(
                (e.code(), e.json_code()),
                ("InvalidClientTokenId", "UnrecognizedClientException")
            );
            assert!(matches!(
                crate::Error::from(e),
                crate::Error::Unauthenticated(_)
            ));
        }
    }
    // Temporary credentials without the token presented.
    let verifier = suite_verifier(case);
    let e = verify_at(&verifier, &Http::parse(V1_REQUEST), VECTOR_TIME).unwrap_err();
    assert_eq!(e, SigV4Error::InvalidSecurityToken);
}

#[test]
fn credentials_debug_redacts_secret_and_token() {
    let creds = AwsCredentials::new(AKID, SECRET).with_session_token("SESSIONTOKENVALUE");
    let shown = format!("{creds:?} {:#?}", creds);
    assert!(shown.contains(AKID));
    assert!(
        !shown.contains(SECRET) && !shown.contains("wJalr"),
        "{shown}"
    );
    assert!(!shown.contains("SESSIONTOKENVALUE"), "{shown}");
    assert_eq!(creds.secret_access_key(), SECRET);
    assert_eq!(creds.session_token(), Some("SESSIONTOKENVALUE"));
    assert_eq!(AwsCredentials::new(AKID, SECRET).session_token(), None);

    // Neither the request's Debug nor an error shows the signature or token.
    let http = Http::parse(
        SUITE
            .iter()
            .find(|c| c.name == "get-vanilla-with-session-token")
            .unwrap()
            .query_signed,
    );
    let shown = format!("{:?}", http.request());
    assert!(
        !shown.contains("7ff2b50b") && !shown.contains("6e86291e"),
        "{shown}"
    );
    let verifier = Verifier::with_credentials("us-east-1", ["service"], [creds]);
    assert!(!format!("{verifier:?}").contains(SECRET));
}

#[test]
fn errors_convert_to_fleetkit_errors() {
    assert!(matches!(
        crate::Error::from(SigV4Error::SignatureDoesNotMatch),
        crate::Error::Unauthenticated(_)
    ));
    assert!(matches!(
        crate::Error::from(SigV4Error::PresignExpired {
            expired_at: VECTOR_TIME,
            now: VECTOR_TIME
        }),
        crate::Error::Expired(_)
    ));
}

// ------------------------------------------------------------------------------------------
// Signing through aws-sigv4 (feature aws): the vectors, and round trips through the verifier
// ------------------------------------------------------------------------------------------

#[cfg(feature = "aws")]
mod signing {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::*;

    fn vector_time() -> SystemTime {
        SystemTime::from(VECTOR_TIME)
    }

    fn creds() -> AwsCredentials {
        AwsCredentials::new(AKID, SECRET)
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> &'h str {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    fn signature_of(url: &str) -> &str {
        url.split("X-Amz-Signature=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
    }

    /// Signs with sign_headers and returns the request as the hub would receive it.
    fn signed_request(
        creds: &AwsCredentials,
        service: &str,
        method: &str,
        url: &str,
        headers: Vec<(String, String)>,
        body: &[u8],
        at: SystemTime,
    ) -> Http {
        let added =
            sign_headers(creds, "us-east-1", service, method, url, &headers, body, at).unwrap();
        let mut http = Http::from_url(method, url, headers, body);
        http.headers.extend(added);
        http
    }

    fn presigned_request(method: &str, url: &str, headers: Vec<(String, String)>) -> Http {
        Http::from_url(method, url, headers, b"")
    }

    #[test]
    fn v1_through_sign_headers() {
        let added = sign_headers(
            &creds(),
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            vector_time(),
        )
        .unwrap();
        assert_eq!(header(&added, "x-amz-date"), "20150830T123600Z");
        assert_eq!(
            header(&added, "authorization"),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature={V1_SIGNATURE}"
            )
        );
        assert_eq!(added.len(), 2, "{added:?}");
        let http = signed_request(
            &creds(),
            "service",
            "GET",
            "https://example.amazonaws.com/",
            vec![],
            b"",
            vector_time(),
        );
        verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
    }

    #[test]
    fn v2_through_presign_url() {
        let url = presign_url(
            &creds(),
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            vector_time(),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
        assert_eq!(signature_of(&url), V2_SIGNATURE);
        assert_eq!(
            url,
            format!(
                "https://example.amazonaws.com/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={V2_SIGNATURE}"
            )
        );
        let http = presigned_request("GET", &url, vec![]);
        verify_at(&example_verifier(), &http, VECTOR_TIME).unwrap();
        assert_every_byte_matters(&example_verifier(), &http, VECTOR_TIME);
    }

    #[test]
    fn header_mode_query_presign_reproduces_v2() {
        // The no-X-Amz-Expires path signs a URL that already carries the query parameters
        // with aws-sigv4's header mode. Given X-Amz-Expires by hand it must give V2.
        let url = "https://example.amazonaws.com/?X-Amz-Expires=3600";
        let signed = crate::auth::sigv4::signing::presign(
            &creds(),
            "us-east-1",
            "service",
            "GET",
            url,
            None,
            vector_time(),
            None,
            true,
        )
        .unwrap();
        assert_eq!(signature_of(&signed), V2_SIGNATURE);
        verify_at(
            &example_verifier(),
            &presigned_request("GET", &signed, vec![]),
            VECTOR_TIME,
        )
        .unwrap();
    }

    #[test]
    fn session_token_vectors_through_aws_sigv4() {
        // get-vanilla-with-session-token: the token signed (standard SigV4).
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let temporary = creds().with_session_token(token);
        let added = sign_headers(
            &temporary,
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            &[],
            b"",
            vector_time(),
        )
        .unwrap();
        assert!(header(&added, "authorization").ends_with("SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"));
        assert_eq!(header(&added, "x-amz-security-token"), token);
        let url = presign_url(
            &temporary,
            "us-east-1",
            "service",
            "GET",
            "https://example.amazonaws.com/",
            vector_time(),
            Some(Duration::from_secs(3600)),
        )
        .unwrap();
        assert_eq!(
            signature_of(&url),
            "7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c"
        );
        assert!(url.ends_with(&format!("&X-Amz-Security-Token={token}")));

        // post-sts-header-after: the token left out of the signature (the AWS IoT way), by
        // aws-sigv4's query mode and by the header-mode path alike.
        let token = SUITE
            .iter()
            .find(|c| c.name == "post-sts-header-after")
            .unwrap()
            .token
            .unwrap();
        let temporary = creds().with_session_token(token);
        for (url, expires) in [
            (
                "https://example.amazonaws.com/",
                Some(Duration::from_secs(3600)),
            ),
            ("https://example.amazonaws.com/?X-Amz-Expires=3600", None),
        ] {
            let signed = crate::auth::sigv4::signing::presign(
                &temporary,
                "us-east-1",
                "service",
                "POST",
                url,
                None,
                vector_time(),
                expires,
                false,
            )
            .unwrap();
            assert_eq!(
                signature_of(&signed),
                "2ce6e6d2e0cf2f9d1b55fafec88cd20574c31dc2e7631979f71ba2310083e95b"
            );
            assert!(signed.ends_with("&X-Amz-Security-Token=AQoDYXdzEPT%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI%2FqkPpKPi%2FkMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d%2Bxo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz%2BscqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR%2FoLxBA%3D%3D"));
        }
    }

    #[test]
    fn post_with_json_body_round_trip() {
        let body =
            br#"{"thingName":"sensor-0042","attributePayload":{"attributes":{"room":"b 12"}}}"#;
        let url = "https://iot.us-east-1.amazonaws.com/things/sensor-0042";
        let at = SystemTime::now();
        let headers = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Custom".to_string(), "  spaced   out  value ".to_string()),
        ];
        let http = signed_request(&creds(), "iot", "POST", url, headers, body, at);
        let verifier = Verifier::with_credentials("us-east-1", ["iot"], [creds()]);
        let verified = verify_at(&verifier, &http, OffsetDateTime::from(at)).unwrap();
        assert_eq!(verified.service, "iot");
        assert!(verified.payload_signed);
        assert!(
            header(&http.headers, "authorization")
                .contains("SignedHeaders=content-type;host;x-amz-date;x-custom,")
        );
        assert_every_byte_matters(&verifier, &http, OffsetDateTime::from(at));
    }

    #[test]
    fn special_characters_in_query_and_path_round_trip() {
        let verifier = Verifier::with_credentials("us-east-1", ["iot"], [creds()]);
        let at = vector_time();
        for url in [
            "https://iot.us-east-1.amazonaws.com/things?name=a%20b&q=x%2By%26z%3Dw&u=%C3%BC%E2%9C%93&empty=&flag&tilde=~-._&pct=%2525&slash=a%2Fb",
            "https://iot.us-east-1.amazonaws.com/things?b=2&a=3&a=1&A=0&a+b=c+d",
            "https://iot.us-east-1.amazonaws.com/things/a%20b/%E2%9C%93%20%C3%BC",
            "https://iot.us-east-1.amazonaws.com/things/a%2Fb/x%3Ay@z!$&'()*+,;=",
            "https://iot.us-east-1.amazonaws.com/a/./b/../c//d/",
            "https://iot.us-east-1.amazonaws.com",
            "https://iot.us-east-1.amazonaws.com?x=1",
            "https://iot.us-east-1.amazonaws.com:8443/things?x=1",
        ] {
            let http = signed_request(&creds(), "iot", "GET", url, vec![], b"", at);
            verify_at(&verifier, &http, VECTOR_TIME).unwrap_or_else(|e| panic!("{url}: {e}"));
            let presigned = presign_url(
                &creds(),
                "us-east-1",
                "iot",
                "GET",
                url,
                at,
                Some(Duration::from_secs(60)),
            )
            .unwrap();
            verify_at(
                &verifier,
                &presigned_request("GET", &presigned, vec![]),
                VECTOR_TIME,
            )
            .unwrap_or_else(|e| panic!("{presigned}: {e}"));
            let presigned =
                presign_url(&creds(), "us-east-1", "iot", "GET", url, at, None).unwrap();
            assert!(!presigned.contains("X-Amz-Expires"));
            assert!(
                presigned.contains(".com/") || presigned.contains(":8443/"),
                "{presigned}"
            );
            verify_at(
                &verifier,
                &presigned_request("GET", &presigned, vec![]),
                VECTOR_TIME,
            )
            .unwrap_or_else(|e| panic!("{presigned}: {e}"));
        }
    }

    #[test]
    fn header_signing_with_session_token_round_trip() {
        let temporary = AwsCredentials::new("ASIAEXAMPLE", SECRET)
            .with_session_token("IQoJb3JpZ2luX2VjEXAMPLE+/=");
        let at = SystemTime::now();
        let url = "https://data-ats.iot.us-east-1.amazonaws.com/topics/a%2Fb?qos=1";
        let added = sign_headers(
            &temporary,
            "us-east-1",
            "iotdata",
            "POST",
            url,
            &[],
            b"hello",
            at,
        )
        .unwrap();
        assert_eq!(
            header(&added, "x-amz-security-token"),
            "IQoJb3JpZ2luX2VjEXAMPLE+/="
        );
        let mut http = Http::from_url("POST", url, vec![], b"hello");
        http.headers.extend(added);
        let verifier =
            Verifier::with_credentials("us-east-1", ["iotdevicegateway", "iotdata"], [temporary]);
        verify_at(&verifier, &http, OffsetDateTime::from(at)).unwrap();
        http.set_header("X-Amz-Security-Token", "IQoJb3JpZ2luX2VjEXAMPLE+/x");
        assert_eq!(
            verify_at(&verifier, &http, OffsetDateTime::from(at)).unwrap_err(),
            SigV4Error::InvalidSecurityToken
        );
    }

    #[test]
    fn websocket_url_with_session_token() {
        let host = "a3qjEXAMPLEffp-ats.iot.us-west-2.amazonaws.com";
        let token = "FwoGZXIvYXdzEXAMPLE//+token==";
        let temporary = AwsCredentials::new("ASIAEXAMPLE", SECRET).with_session_token(token);
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let url = presign_websocket_url(&temporary, "us-west-2", host, at, None).unwrap();
        let expected_prefix = format!(
            "wss://{host}/mqtt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=ASIAEXAMPLE%2F20231114%2Fus-west-2%2Fiotdevicegateway%2Faws4_request&X-Amz-Date=20231114T221320Z&X-Amz-SignedHeaders=host&X-Amz-Signature="
        );
        assert!(url.starts_with(&expected_prefix), "{url}");
        assert!(
            url.ends_with("&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE%2F%2F%2Btoken%3D%3D"),
            "{url}"
        );

        let http = presigned_request("GET", &url, vec![]);
        let now = OffsetDateTime::from(at);
        let iot =
            Verifier::with_credentials("us-west-2", ["iotdevicegateway"], [temporary.clone()])
                .security_token_unsigned(true);
        let verified = verify_at(&iot, &http, now).unwrap();
        assert_eq!(
            (verified.service.as_str(), verified.region.as_str()),
            ("iotdevicegateway", "us-west-2")
        );
        // A verifier that expects the token inside the signature refuses it.
        let standard =
            Verifier::with_credentials("us-west-2", ["iotdevicegateway"], [temporary.clone()]);
        assert_eq!(
            verify_at(&standard, &http, now).unwrap_err(),
            SigV4Error::SignatureDoesNotMatch
        );
        // The token is outside the signature but still checked.
        let mut swapped = http.clone();
        swapped.query = swapped.query.replace("token%3D%3D", "token%3D");
        assert_eq!(
            verify_at(&iot, &swapped, now).unwrap_err(),
            SigV4Error::InvalidSecurityToken
        );
        let mut dropped = http.clone();
        dropped.query = dropped
            .query
            .split("&X-Amz-Security-Token=")
            .next()
            .unwrap()
            .to_string();
        assert_eq!(
            verify_at(&iot, &dropped, now).unwrap_err(),
            SigV4Error::InvalidSecurityToken
        );
        // No X-Amz-Expires: valid within the skew only.
        assert!(matches!(
            verify_at(&iot, &http, now + time::Duration::seconds(301)),
            Err(SigV4Error::RequestExpired { .. })
        ));
        // Every other byte matters too (the token's bytes are checked by value).
        assert_every_byte_matters(&iot, &http, now);
    }

    #[test]
    fn websocket_url_without_token_and_with_expiry() {
        let host = "example-ats.iot.eu-west-1.amazonaws.com";
        let at = SystemTime::now();
        let now = OffsetDateTime::from(at);
        let verifier = Verifier::with_credentials("eu-west-1", ["iotdevicegateway"], [creds()])
            .security_token_unsigned(true);

        let url = presign_websocket_url(&creds(), "eu-west-1", host, at, None).unwrap();
        assert!(!url.contains("X-Amz-Security-Token") && !url.contains("X-Amz-Expires"));
        verify_at(&verifier, &presigned_request("GET", &url, vec![]), now).unwrap();

        let url = presign_websocket_url(
            &creds(),
            "eu-west-1",
            host,
            at,
            Some(Duration::from_secs(86_400)),
        )
        .unwrap();
        assert!(url.contains("&X-Amz-Expires=86400&"));
        let http = presigned_request("GET", &url, vec![]);
        verify_at(&verifier, &http, now + time::Duration::hours(23)).unwrap();
        assert!(matches!(
            verify_at(&verifier, &http, now + time::Duration::hours(25)),
            Err(SigV4Error::PresignExpired { .. })
        ));
        // Another host, path or region is refused.
        let mut other = http.clone();
        other.set_header("Host", "other-ats.iot.eu-west-1.amazonaws.com");
        assert_eq!(
            verify_at(&verifier, &other, now).unwrap_err(),
            SigV4Error::SignatureDoesNotMatch
        );
        let mut other = http.clone();
        other.path = "/mqtt2".into();
        assert_eq!(
            verify_at(&verifier, &other, now).unwrap_err(),
            SigV4Error::SignatureDoesNotMatch
        );
    }

    #[test]
    fn signing_rejects_bad_input_without_panicking() {
        let at = vector_time();
        for url in [
            "/relative",
            "example.com/x",
            "https:///x",
            "://x",
            "https://h/x#frag",
            "https://h/a b",
        ] {
            assert!(
                matches!(
                    sign_headers(&creds(), "us-east-1", "iot", "GET", url, &[], b"", at),
                    Err(crate::Error::InvalidInput { .. })
                ),
                "{url}"
            );
            assert!(
                presign_url(&creds(), "us-east-1", "iot", "GET", url, at, None).is_err(),
                "{url}"
            );
        }
        for reserved in ["Authorization", "x-amz-date", "X-Amz-Security-Token"] {
            let headers = vec![(reserved.to_string(), "x".to_string())];
            assert!(
                sign_headers(
                    &creds(),
                    "us-east-1",
                    "iot",
                    "GET",
                    "https://h/",
                    &headers,
                    b"",
                    at
                )
                .is_err()
            );
        }
        let headers = vec![("Bad Name".to_string(), "x".to_string())];
        assert!(
            sign_headers(
                &creds(),
                "us-east-1",
                "iot",
                "GET",
                "https://h/",
                &headers,
                b"",
                at
            )
            .is_err()
        );
        for host in ["", "a/b", "a b", "user@h", "h?x"] {
            assert!(
                presign_websocket_url(&creds(), "us-east-1", host, at, None).is_err(),
                "{host:?}"
            );
        }
        assert!(
            presign_websocket_url(
                &creds(),
                "us-east-1",
                "h",
                at,
                Some(Duration::from_secs(604_801))
            )
            .is_err()
        );
        assert!(presign_url(&creds(), "", "iot", "GET", "https://h/", at, None).is_err());
        assert!(presign_url(&creds(), "us-east-1", "a/b", "GET", "https://h/", at, None).is_err());
    }
}

// ------------------------------------------------------------------------------------------
// The suite's requests (aws-sigv4 1.6.4's copy of the aws-c-auth SigV4 test suite, v4,
// normalize = true cases; credentials AKIDEXAMPLE, us-east-1, service "service",
// 2015-08-30T12:36:00Z), as header-signed-request.txt and query-signed-request.txt give them.
// ------------------------------------------------------------------------------------------

const SUITE: &[SuiteCase] = &[
    SuiteCase {
        name: "get-header-key-duplicate",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value2
My-Header1:value2
My-Header1:value1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=3349ee0b81b4b589da0ff28a395c3591e04de515651dd74f298fa992d1507a97 HTTP/1.1
Host:example.amazonaws.com
My-Header1:value2
My-Header1:value2
My-Header1:value1

"#,
    },
    SuiteCase {
        name: "get-header-value-multiline",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1
  value2
     value3
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cfd34249e4b1c8d6b91ef74165d41a32e5fab3306300901bb65a51a73575eefd

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=e6f5def831211aca02987a44b96826706278c7bc078112ae0263659c5b2f2d56 HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1
  value2
     value3

"#,
    },
    SuiteCase {
        name: "get-header-value-order",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value4
My-Header1:value1
My-Header1:value3
My-Header1:value2
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=313720e71ca6202fdcfa9b20f88de01a4eb0638a83c833b1c184359a4eda864e HTTP/1.1
Host:example.amazonaws.com
My-Header1:value4
My-Header1:value1
My-Header1:value3
My-Header1:value2

"#,
    },
    SuiteCase {
        name: "get-header-value-trim",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
My-Header1: value1
My-Header2: "a   b   c"
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;my-header2;x-amz-date, Signature=acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1%3Bmy-header2&X-Amz-Expires=3600&X-Amz-Signature=e7bb0fd515e125e1aec2ecc4c0c17484fb06f6846b927c35e46005dd3df3acd4 HTTP/1.1
Host:example.amazonaws.com
My-Header1: value1
My-Header2: "a   b   c"

"#,
    },
    SuiteCase {
        name: "get-relative-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /example/.. HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        query_signed: r#"GET /example/..?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-relative-relative-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /example1/example2/../.. HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        query_signed: r#"GET /example1/example2/../..?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-slash-dot-slash-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /./ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        query_signed: r#"GET /./?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-slash-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET // HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        query_signed: r#"GET //?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-slash-pointless-dot-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /./example HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=ef75d96142cf21edca26f06005da7988e4f8dc83a165a80865db7089db637ec5

"#,
        query_signed: r#"GET /./example?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=35034b1a0bdd969f346975386daf8aedfd4976573b8348cf4f67eaa41c5857de HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-slashes-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET //example// HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84

"#,
        query_signed: r#"GET //example//?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=c1834e8fb0307243711f0f907f6ab7311ed300d87f13792d7ee4da89ab93e082 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-space-normalized",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /example space/ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741

"#,
        query_signed: r#"GET /example space/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=7a1f416954786484c9824d93c1f26ef64acb9b1b6c9154d08c9f07d0e394abf6 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-unreserved",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f

"#,
        query_signed: r#"GET /-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=95968482db1b9e0fadef6efc1bd24689f77c77d9ef56919c96a28cc92e0d6005 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-utf8",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /ሴ HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85

"#,
        query_signed: r#"GET /ሴ?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=10eae3f14a260bd3911cc6d008d3c576d143b05b62f09782a7a4b37f52178e44 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-empty-query-key",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=a67d582fa61cc504c4bae71f336f98b97f1ea3c7a6bfe1b6e45aec72011b9aeb

"#,
        query_signed: r#"GET /?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=49096700cbbaa5753443850f40df10f904fc2fdb544dc9512203cc77c471a9de HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-query",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=e93c787ed7f371d5c6b165c1b38ede9550f4dce4144713e844b25b7192d3865d HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-query-order-encoded",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=371d3713e185cc334048618a97f809c9ffe339c62934c032af5a0e595648fcac

"#,
        query_signed: r#"GET /?Param-3=Value3&Param=Value2&%E1%88%B4=Value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=c5f1848ceec943ac2ca68ee720460c23aaae30a2300586597ada94c4a65e4787 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-query-order-key-case",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /?Param2=value2&Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500

"#,
        query_signed: r#"GET /?Param2=value2&Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=86012e2c9ad4d77369f5d81c11f75158aae4f895a085212cc6d3f923d300bed5 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-query-unreserved",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197

"#,
        query_signed: r#"GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=8e76a88a7433637b12778d5592799b29ad21ecd6cf6325051c21d86f0acda2bf HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-utf8-query",
        token: None,
        omit_session_token: false,
        header_signed: r#"GET /?ሴ=bar HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04

"#,
        query_signed: r#"GET /?ሴ=bar&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=0bdd809b1519ac4f0c1dc3540e2cc46bd0c7f778eda408b2ebf3b913d21ff600 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "get-vanilla-with-session-token",
        token: Some("6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
        omit_session_token: false,
        header_signed: r#"GET / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8

"#,
        query_signed: r#"GET /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Security-Token=6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267&X-Amz-Signature=7ff2b50b376cb4d151970630573d6291dc128cc5c2a12ffb237f73cc53f67b6c HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-header-key-case",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=2ce6e6d2e0cf2f9d1b55fafec88cd20574c31dc2e7631979f71ba2310083e95b HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-header-key-sort",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c

"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=c09d07e0d55871f10f2a6d350d994acf6825a3cae70673d7def55616e6119dd7 HTTP/1.1
Host:example.amazonaws.com
My-Header1:value1

"#,
    },
    SuiteCase {
        name: "post-header-value-case",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Host:example.amazonaws.com
My-Header1:VALUE1
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;my-header1;x-amz-date, Signature=cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d

"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host%3Bmy-header1&X-Amz-Expires=3600&X-Amz-Signature=0698bc9e4f7f9139065ba2909c0e99da257e8e2a42492a097bcd46d792391fed HTTP/1.1
Host:example.amazonaws.com
My-Header1:VALUE1

"#,
    },
    SuiteCase {
        name: "post-sts-header-after",
        token: Some(
            "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==",
        ),
        omit_session_token: true,
        header_signed: r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Security-Token=AQoDYXdzEPT%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI%2FqkPpKPi%2FkMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d%2Bxo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz%2BscqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR%2FoLxBA%3D%3D&X-Amz-Signature=2ce6e6d2e0cf2f9d1b55fafec88cd20574c31dc2e7631979f71ba2310083e95b HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-sts-header-before",
        token: Some(
            "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==",
        ),
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Security-Token:AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead

"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Security-Token=AQoDYXdzEPT%2F%2F%2F%2F%2F%2F%2F%2F%2F%2FwEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI%2FqkPpKPi%2FkMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d%2Bxo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz%2BscqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR%2FoLxBA%3D%3D&X-Amz-Signature=46c2e3c63c1dbe7d39f8ada16fe7f001c1f56c5791441565323677f96308871c HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-vanilla",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b

"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=2ce6e6d2e0cf2f9d1b55fafec88cd20574c31dc2e7631979f71ba2310083e95b HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-vanilla-empty-query-value",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11

"#,
        query_signed: r#"POST /?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=a9ef26247f293bffe40eeff86a0480ba8c14d31503b2e0c3399e3a16bf1a3682 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-vanilla-query",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST /?Param1=value1 HTTP/1.1
Host:example.amazonaws.com
X-Amz-Date:20150830T123600Z
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11

"#,
        query_signed: r#"POST /?Param1=value1&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=host&X-Amz-Expires=3600&X-Amz-Signature=a9ef26247f293bffe40eeff86a0480ba8c14d31503b2e0c3399e3a16bf1a3682 HTTP/1.1
Host:example.amazonaws.com

"#,
    },
    SuiteCase {
        name: "post-x-www-form-urlencoded",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Content-Type:application/x-www-form-urlencoded
Host:example.amazonaws.com
Content-Length:13
X-Amz-Date:20150830T123600Z
x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b

Param1=value1"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&X-Amz-Expires=3600&X-Amz-Signature=89a40deed0f26f9461242825a082d2222717248abc7ab41f552ad84a94ad46e9 HTTP/1.1
Content-Type:application/x-www-form-urlencoded
Host:example.amazonaws.com
Content-Length:13

Param1=value1"#,
    },
    SuiteCase {
        name: "post-x-www-form-urlencoded-parameters",
        token: None,
        omit_session_token: false,
        header_signed: r#"POST / HTTP/1.1
Content-Type:application/x-www-form-urlencoded; charset=utf-8
Host:example.amazonaws.com
Content-Length:13
X-Amz-Date:20150830T123600Z
x-amz-content-sha256:9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e
Authorization:AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, Signature=328d1b9eaadca9f5818ef05e8392801e091653bafec24fcab71e7344e7f51422

Param1=value1"#,
        query_signed: r#"POST /?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDEXAMPLE%2F20150830%2Fus-east-1%2Fservice%2Faws4_request&X-Amz-Date=20150830T123600Z&X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost&X-Amz-Expires=3600&X-Amz-Signature=0dbeb9b026c7b6675f266b8427efec9b4fa8b1f6ef1477d717aea231106eab4d HTTP/1.1
Content-Type:application/x-www-form-urlencoded; charset=utf-8
Host:example.amazonaws.com
Content-Length:13

Param1=value1"#,
    },
];
