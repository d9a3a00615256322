//! Interop with PyJWT, a widely used JWT library: tokens PyJWT mints verify here, tokens minted
//! here verify in PyJWT, and the attacks PyJWT can be made to produce (`alg: none`, HS256 keyed
//! with the public key) are refused.
//!
//! Needs Python 3 with PyJWT and cryptography: `python3 -m pip install pyjwt cryptography`.
//! The interpreter is `$FLEETKIT_PYTHON`, or `python3`. Without PyJWT these tests fail (they
//! never skip silently).

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fleetkit::Error;
use fleetkit::auth::{Audience, Claims, JwtSigner, JwtVerifier};
use fleetkit::identity::{Signer as _, SoftwareKey};
use serde_json::{Value, json};

const ISS: &str = "https://auth.fleetkit.test";
const AUD: &str = "fleet-api";

/// The helper run by the interpreter: `python -c SCRIPT MODE ARGS...`, key material on stdin,
/// one JSON object on stdout.
const SCRIPT: &str = r#"
import base64, hashlib, hmac, json, sys
import jwt

def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def by_hand(header, claims, sign):
    head = b64(json.dumps(header, separators=(",", ":")).encode())
    body = b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = (head + "." + body).encode()
    return head + "." + body + "." + b64(sign(signing_input))

mode, args = sys.argv[1], sys.argv[2:]
out = {"pyjwt": jwt.__version__}
if mode == "mint-es256":
    claims, headers = json.loads(args[0]), json.loads(args[1])
    out["token"] = jwt.encode(claims, sys.stdin.read(), algorithm="ES256", headers=headers or None)
elif mode == "decode":
    token, audience, issuer = args
    options = {"require": ["exp", "iat"]}
    try:
        out["claims"] = jwt.decode(token, sys.stdin.read(), algorithms=["ES256"],
                                   audience=audience, issuer=issuer or None, options=options)
        out["header"] = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        out["error"] = type(e).__name__ + ": " + str(e)
elif mode == "mint-hs256":
    claims, secret = json.loads(args[0]), sys.stdin.buffer.read()
    try:
        out["token"] = jwt.encode(claims, secret, algorithm="HS256")
        out["made_by"] = "pyjwt"
    except jwt.exceptions.InvalidKeyError as e:
        # PyJWT refuses a PEM public key as an HMAC secret; an attacker is not so polite.
        out["pyjwt_refused"] = str(e)
        out["token"] = by_hand({"alg": "HS256", "typ": "JWT"}, claims,
                               lambda m: hmac.new(secret, m, hashlib.sha256).digest())
        out["made_by"] = "hand"
elif mode == "mint-none":
    claims = json.loads(args[0])
    try:
        out["token"] = jwt.encode(claims, None, algorithm="none")
        out["made_by"] = "pyjwt"
    except Exception as e:
        out["pyjwt_refused"] = str(e)
        out["token"] = by_hand({"alg": "none", "typ": "JWT"}, claims, lambda m: b"")
        out["made_by"] = "hand"
else:
    raise SystemExit("unknown mode " + mode)
print(json.dumps(out))
"#;

/// The interpreter, checked once to have PyJWT and cryptography.
fn interpreter() -> &'static str {
    static CHECKED: OnceLock<String> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let python = std::env::var("FLEETKIT_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&python)
            .args(["-c", "import jwt, cryptography; print(jwt.__version__)"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the Python interpreter {python:?} ({e}). These tests need \
                     Python 3 with PyJWT: `{python} -m pip install pyjwt cryptography`, or set \
                     FLEETKIT_PYTHON to an interpreter that has them."
                )
            });
        assert!(
            out.status.success(),
            "{python} cannot import PyJWT/cryptography: run `{python} -m pip install pyjwt \
             cryptography` (or set FLEETKIT_PYTHON to an interpreter that has them).\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        python
    })
}

/// Runs the helper in `mode`; returns its JSON answer.
fn pyjwt(mode: &str, args: &[&str], stdin: &[u8]) -> Value {
    let python = interpreter();
    let mut child = Command::new(python)
        .args(["-c", SCRIPT, mode])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the interpreter ran a moment ago");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write to the helper's stdin");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyJWT helper `{mode}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "PyJWT helper printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn key() -> Arc<SoftwareKey> {
    Arc::new(SoftwareKey::generate_p256().unwrap())
}

fn verifier(key: &SoftwareKey) -> JwtVerifier {
    JwtVerifier::from_signer(key)
        .unwrap()
        .expected_issuer(ISS)
        .expected_audience(AUD)
}

/// PyJWT mints an ES256 token with `key`'s private half.
fn pyjwt_es256(key: &SoftwareKey, claims: &Value, headers: &Value) -> String {
    let private_pem = key.to_pkcs8_pem().unwrap();
    let answer = pyjwt(
        "mint-es256",
        &[&claims.to_string(), &headers.to_string()],
        private_pem.as_bytes(),
    );
    answer["token"].as_str().expect("a token").to_owned()
}

#[test]
fn pyjwt_es256_token_verifies_here_with_claims_intact() {
    let key = key();
    let now = now();
    let claims = json!({
        "iss": ISS,
        "sub": "sensor-0042",
        "aud": AUD,
        "iat": now,
        "nbf": now - 5,
        "exp": now + 600,
        "jti": "b1f0c7e2",
        "scope": "telemetry:write config:read",
        "tenant": {"id": 7, "tags": ["a", "b"]},
        "name": "Küche ☕",
    });
    let token = pyjwt_es256(&key, &claims, &json!({}));
    let verified = verifier(&key)
        .verify(&token)
        .expect("PyJWT's token verifies");

    assert_eq!(verified.iss.as_deref(), Some(ISS));
    assert_eq!(verified.sub.as_deref(), Some("sensor-0042"));
    assert_eq!(verified.aud, Audience::one(AUD));
    assert_eq!(
        (verified.iat, verified.nbf, verified.exp),
        (now, Some(now - 5), now + 600)
    );
    assert_eq!(verified.jti.as_deref(), Some("b1f0c7e2"));
    assert_eq!(
        verified.scopes().collect::<Vec<_>>(),
        ["telemetry:write", "config:read"]
    );
    assert_eq!(
        verified.extra["tenant"],
        json!({"id": 7, "tags": ["a", "b"]})
    );
    assert_eq!(verified.extra["name"], "Küche ☕");
    // Nothing lost or added: our claims serialize back to what PyJWT signed.
    assert_eq!(serde_json::to_value(&verified).unwrap(), claims);
}

#[test]
fn pyjwt_token_with_kid_and_audience_list_verifies_here() {
    let (old, current) = (key(), key());
    let now = now();
    let claims = json!({"iss": ISS, "aud": ["other-api", AUD], "iat": now, "exp": now + 60});
    let token = pyjwt_es256(&current, &claims, &json!({"kid": "2025-06"}));
    let verifier = JwtVerifier::new_with_kid("2024-12", old.public_key_spki())
        .unwrap()
        .with_kid_key("2025-06", current.public_key_spki())
        .unwrap()
        .expected_issuer(ISS)
        .expected_audience(AUD);
    let verified = verifier.verify(&token).unwrap();
    assert_eq!(verified.aud, Audience::many(["other-api", AUD]));

    // The same token under a kid we do not know is refused.
    let token = pyjwt_es256(&current, &claims, &json!({"kid": "2026-01"}));
    assert!(matches!(verifier.verify(&token), Err(Error::Unauthenticated(m)) if m.contains("kid")));
}

#[test]
fn our_token_verifies_in_pyjwt() {
    let key = key();
    let claims = Claims::new(ISS, "sensor-0042", AUD, Duration::from_secs(600))
        .with_scopes(["telemetry:write"])
        .unwrap()
        .with_claim("tenant", json!({"id": 7}))
        .unwrap();
    let token = JwtSigner::new(key.clone())
        .unwrap()
        .with_kid("k1")
        .sign(&claims)
        .unwrap();

    let answer = pyjwt(
        "decode",
        &[&token, AUD, ISS],
        key.public_key_pem().as_bytes(),
    );
    assert!(
        answer.get("error").is_none(),
        "PyJWT refused our token: {answer}"
    );
    assert_eq!(
        answer["header"],
        json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})
    );
    assert_eq!(answer["claims"], serde_json::to_value(&claims).unwrap());

    // PyJWT really checks: the wrong audience, or a flipped signature bit, fails there too.
    let answer = pyjwt(
        "decode",
        &[&token, "another-api", ISS],
        key.public_key_pem().as_bytes(),
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("InvalidAudienceError"),
        "{answer}"
    );
    let other = SoftwareKey::generate_p256().unwrap();
    let answer = pyjwt(
        "decode",
        &[&token, AUD, ISS],
        other.public_key_pem().as_bytes(),
    );
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("InvalidSignatureError"),
        "{answer}"
    );
}

#[test]
fn our_gcp_style_token_verifies_in_pyjwt() {
    // A Google Cloud IoT Core device password: iat, exp and the project id as aud, no iss.
    let key = key();
    let claims = Claims::for_audience("my-gcp-project", Duration::from_secs(3600));
    let token = JwtSigner::new(key.clone()).unwrap().sign(&claims).unwrap();
    let answer = pyjwt(
        "decode",
        &[&token, "my-gcp-project", ""],
        key.public_key_pem().as_bytes(),
    );
    assert!(
        answer.get("error").is_none(),
        "PyJWT refused our token: {answer}"
    );
    assert_eq!(
        answer["claims"],
        json!({"aud": "my-gcp-project", "iat": claims.iat, "exp": claims.exp})
    );
}

#[test]
fn pyjwt_hs256_token_keyed_with_our_public_key_is_refused() {
    let key = key();
    let now = now();
    let claims = json!({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 600}).to_string();
    // The PEM text is what the classic attack uses; the DER bytes are the other obvious choice.
    // Recent PyJWT refuses both as HMAC secrets (older releases take the DER), and then the
    // helper builds the same token by hand: an attacker is not so polite.
    let pem = key.public_key_pem();
    for secret in [pem.as_bytes(), key.public_key_spki()] {
        let answer = pyjwt("mint-hs256", &[&claims], secret);
        let token = answer["token"].as_str().unwrap();
        match verifier(&key).verify(token) {
            Err(Error::Unauthenticated(msg)) => {
                assert!(
                    msg.contains("\"HS256\""),
                    "{msg} (token made by {})",
                    answer["made_by"]
                )
            }
            other => panic!(
                "HS256 token ({}) was not refused: {other:?}",
                answer["made_by"]
            ),
        }
    }
}

#[test]
fn pyjwt_alg_none_token_is_refused() {
    let key = key();
    let now = now();
    let claims = json!({"iss": ISS, "aud": AUD, "iat": now, "exp": now + 600}).to_string();
    let answer = pyjwt("mint-none", &[&claims], b"");
    let token = answer["token"].as_str().unwrap();
    assert!(token.ends_with('.'), "an unsigned token: {answer}");
    match verifier(&key).verify(token) {
        Err(Error::Unauthenticated(msg)) => assert!(msg.contains("\"none\""), "{msg}"),
        other => panic!(
            "alg none token ({}) was not refused: {other:?}",
            answer["made_by"]
        ),
    }
}

#[test]
fn pyjwt_expired_es256_token_is_refused_as_expired() {
    let key = key();
    let now = now();
    let claims = json!({"iss": ISS, "aud": AUD, "iat": now - 7200, "exp": now - 3600});
    let token = pyjwt_es256(&key, &claims, &json!({}));
    match verifier(&key).verify(&token) {
        Err(Error::Expired(msg)) => assert!(msg.contains("exp"), "{msg}"),
        other => panic!("expected Error::Expired, got {other:?}"),
    }
    // Within the default 60 s leeway it is still accepted, as in PyJWT with leeway=60.
    let claims = json!({"iss": ISS, "aud": AUD, "iat": now - 600, "exp": now - 30});
    verifier(&key)
        .verify(&pyjwt_es256(&key, &claims, &json!({})))
        .unwrap();
}
