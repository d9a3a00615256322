//! Shared access signature (SAS) tokens, as Azure IoT Hub and the Device Provisioning Service
//! (DPS) take them: [`SasToken`].
//!
//! The wire format (PROTOCOLS.md §2.3, §3.1):
//!
//! ```text
//! SharedAccessSignature sr={url-encoded resource}&sig={url-encoded base64 HMAC}&se={expiry}[&skn={key name}]
//! ```
//!
//! where the HMAC is HMAC-SHA256, keyed with the (base64-decoded) key, over
//! `{url-encoded resource} + "\n" + {expiry}`, and the expiry is in seconds since the Unix epoch.
//!
//! Signing URL-encodes the way the Python SDK's `quote(uri, safe="")` and azure-sdk-for-c's hub
//! client do: everything but the RFC 3986 unreserved characters `A-Z a-z 0-9 - . _ ~`, with
//! upper-case hex. Clients disagree on the hex case (the DPS clients of azure-sdk-for-c and
//! azure-iot-sdk-c write `%2f`), so verification computes the HMAC over `sr` exactly as received
//! and, failing that, over the upper- and lower-hex spellings of the same resource. It never
//! changes the letters of the resource itself: a signature binds the resource's exact spelling.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use zeroize::Zeroizing;

use crate::identity::SymmetricKey;
use crate::{Error, Result};

/// The largest token [`SasToken::parse`] reads: 4 KiB. Real tokens are a few hundred bytes.
pub const MAX_SAS_TOKEN_BYTES: usize = 4 * 1024;

/// What every token starts with.
const PREFIX: &str = "SharedAccessSignature ";

/// An HMAC-SHA256 tag is 32 bytes.
const SIGNATURE_LEN: usize = 32;

/// A parsed or freshly signed SAS token.
///
/// The token is a bearer credential: [`Debug`](fmt::Debug) shows the resource, expiry and key
/// name but never the signature, and there is no `Display`. Take the wire form with
/// [`expose_secret`](Self::expose_secret) when it goes into an MQTT password or an
/// `Authorization` header.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use fleetkit::auth::sas::SasToken;
/// use fleetkit::identity::SymmetricKey;
///
/// let key = SymmetricKey::from_base64("NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=")?;
/// let expiry = UNIX_EPOCH + Duration::from_secs(1_578_941_692);
/// let token = SasToken::sign("myiothub.azure-devices.net/devices/my_device", &key, None, expiry)?;
/// assert_eq!(
///     token.expose_secret(),
///     "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device\
///      &sig=dIMMdDDBGFR8eqAfYkiMxoOphaFMPtMgj7Wg%2FYB1AvU%3D&se=1578941692"
/// );
/// assert!(!format!("{token:?}").contains("dIMMdD"));
///
/// // The hub side: verify for the resource being accessed, at a time before expiry.
/// let now = UNIX_EPOCH + Duration::from_secs(1_578_940_000);
/// SasToken::verify(token.expose_secret(), &key,
///                  "myiothub.azure-devices.net/devices/my_device", now)?;
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone)]
pub struct SasToken {
    /// The whole token as it goes on the wire.
    token: Zeroizing<String>,
    /// `sr` as it appears in the token (URL-encoded).
    encoded_resource: String,
    /// `sr` decoded.
    resource: String,
    /// `se` as it appears in the token: the signed text.
    expiry_text: String,
    /// `se` parsed.
    expiry: u64,
    /// `skn` decoded, if present.
    key_name: Option<String>,
    /// `sig` decoded: the HMAC tag.
    signature: Zeroizing<Vec<u8>>,
}

impl SasToken {
    /// Signs a token for `resource_uri` (not yet URL-encoded, for example
    /// `myhub.azure-devices.net/devices/sensor-1` or `0ne00000000/registrations/sensor-1`) with
    /// `key`, valid until `expiry` (whole seconds; the fraction is dropped).
    ///
    /// `key_name` becomes `skn`: `None` for a per-device key, `Some("registration")` for DPS,
    /// a policy name (`iothubowner`, …) for a hub-level shared access policy.
    ///
    /// Fails with [`Error::InvalidInput`] if the resource or key name is empty or the expiry is
    /// before 1970.
    pub fn sign(
        resource_uri: &str,
        key: &SymmetricKey,
        key_name: Option<&str>,
        expiry: SystemTime,
    ) -> Result<SasToken> {
        if resource_uri.is_empty() {
            return Err(Error::invalid("resource URI", "is empty"));
        }
        if key_name.is_some_and(str::is_empty) {
            return Err(Error::invalid(
                "key name",
                "is empty (use None to omit skn)",
            ));
        }
        let expiry = expiry
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::invalid("expiry", "is before 1970"))?
            .as_secs();
        let encoded_resource = url_encode(resource_uri, HexCase::Upper);
        let expiry_text = expiry.to_string();
        let tag = hmac::sign(
            &hmac_key(key),
            string_to_sign(&encoded_resource, &expiry_text).as_bytes(),
        );
        let signature = Zeroizing::new(tag.as_ref().to_vec());
        let sig_b64 = Zeroizing::new(STANDARD.encode(tag.as_ref()));
        let mut token = Zeroizing::new(format!(
            "{PREFIX}sr={encoded_resource}&sig={}&se={expiry_text}",
            url_encode(&sig_b64, HexCase::Upper)
        ));
        if let Some(name) = key_name {
            token.push_str("&skn=");
            token.push_str(&url_encode(name, HexCase::Upper));
        }
        if token.len() > MAX_SAS_TOKEN_BYTES {
            return Err(Error::invalid(
                "resource URI",
                format!("the token would exceed {MAX_SAS_TOKEN_BYTES} bytes"),
            ));
        }
        Ok(SasToken {
            token,
            encoded_resource,
            resource: resource_uri.to_owned(),
            expiry_text,
            expiry,
            key_name: key_name.map(str::to_owned),
            signature,
        })
    }

    /// Parses a token without checking its signature, so its resource and key name can choose
    /// the key to check it with. Fields may come in any order.
    ///
    /// Fails with [`Error::Unauthenticated`] if it is not a well-formed SAS token: a missing or
    /// repeated `sr`, `sig` or `se`, an unknown field, bad percent-encoding, a `sig` that is not
    /// a base64 HMAC-SHA256, a non-numeric `se`, or more than [`MAX_SAS_TOKEN_BYTES`]. The reason
    /// never quotes the signature.
    pub fn parse(token: &str) -> Result<SasToken> {
        if token.len() > MAX_SAS_TOKEN_BYTES {
            return Err(malformed(format!(
                "longer than {MAX_SAS_TOKEN_BYTES} bytes"
            )));
        }
        let token = token.trim();
        let body = token
            .strip_prefix(PREFIX)
            .ok_or_else(|| malformed("does not start with \"SharedAccessSignature \""))?;
        let (mut sr, mut sig, mut se, mut skn) = (None, None, None, None);
        for field in body.split('&') {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| malformed("a field has no '='"))?;
            let slot = match name {
                "sr" => &mut sr,
                "sig" => &mut sig,
                "se" => &mut se,
                "skn" => &mut skn,
                _ => return Err(malformed("unknown field (expected sr, sig, se, skn)")),
            };
            if slot.replace(value).is_some() {
                return Err(malformed(format!("field {name} appears twice")));
            }
        }
        let encoded_resource = sr.ok_or_else(|| malformed("sr is missing"))?;
        let sig = sig.ok_or_else(|| malformed("sig is missing"))?;
        let expiry_text = se.ok_or_else(|| malformed("se is missing"))?;

        let resource =
            url_decode(encoded_resource).ok_or_else(|| malformed("sr is not URL-encoded UTF-8"))?;
        if resource.is_empty() {
            return Err(malformed("sr is empty"));
        }
        let signature = url_decode(sig)
            .map(Zeroizing::new)
            .and_then(|b64| STANDARD.decode(b64.as_bytes()).ok())
            .map(Zeroizing::new)
            .filter(|tag| tag.len() == SIGNATURE_LEN)
            .ok_or_else(|| malformed("sig is not a URL-encoded base64 HMAC-SHA256"))?;
        if expiry_text.is_empty() || !expiry_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed("se is not a number of seconds"));
        }
        let expiry = expiry_text
            .parse::<u64>()
            .map_err(|_| malformed("se is out of range"))?;
        let key_name = match skn {
            Some(text) => Some(
                url_decode(text)
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| malformed("skn is empty or not URL-encoded UTF-8"))?,
            ),
            None => None,
        };
        Ok(SasToken {
            token: Zeroizing::new(token.to_owned()),
            encoded_resource: encoded_resource.to_owned(),
            resource,
            expiry_text: expiry_text.to_owned(),
            expiry,
            key_name,
            signature,
        })
    }

    /// Parses `token` and checks it with [`verify_parsed`](Self::verify_parsed).
    pub fn verify(
        token: &str,
        key: &SymmetricKey,
        expected_resource: &str,
        now: SystemTime,
    ) -> Result<()> {
        Self::parse(token)?.verify_parsed(key, expected_resource, now)
    }

    /// Checks that this token was signed with `key`, grants `expected_resource` and has not
    /// expired at `now`.
    ///
    /// - The signature is compared in constant time (`ring::hmac::verify`).
    /// - The token's resource grants `expected_resource` if it is equal to it or a prefix of it
    ///   that ends at a `/` (Azure's rule, PROTOCOLS.md §2.3: `a/b` covers `a/b/c`, not `a/bc`).
    ///   The comparison is case-sensitive.
    /// - The token has expired once `now` reaches `se`.
    ///
    /// Fails with [`Error::Unauthenticated`] for a bad signature or a resource that does not
    /// cover `expected_resource`, and with [`Error::Expired`] for a genuine token past its
    /// expiry. Expiry is only reported once the signature has verified.
    pub fn verify_parsed(
        &self,
        key: &SymmetricKey,
        expected_resource: &str,
        now: SystemTime,
    ) -> Result<()> {
        if !self.signed_with(key) {
            return Err(Error::Unauthenticated(format!(
                "the SAS token for {:?} does not verify with this key",
                self.resource
            )));
        }
        self.check_claims(expected_resource, ResourceMatch::SegmentPrefix, now)
    }

    /// Whether `key` made this token's signature (over `sr` as received, or over either
    /// hex-case spelling of the same resource). Constant time for each candidate.
    pub(crate) fn signed_with(&self, key: &SymmetricKey) -> bool {
        let key = hmac_key(key);
        let mut candidates = vec![self.encoded_resource.clone()];
        for case in [HexCase::Upper, HexCase::Lower] {
            let spelling = url_encode(&self.resource, case);
            if !candidates.contains(&spelling) {
                candidates.push(spelling);
            }
        }
        // No early exit: the work done does not depend on which candidate matched.
        candidates.iter().fold(false, |ok, encoded| {
            let message = string_to_sign(encoded, &self.expiry_text);
            hmac::verify(&key, message.as_bytes(), &self.signature).is_ok() | ok
        })
    }

    /// The resource and expiry checks of [`verify_parsed`](Self::verify_parsed), for a token
    /// whose signature is already known to be good.
    pub(crate) fn check_claims(
        &self,
        expected_resource: &str,
        rule: ResourceMatch,
        now: SystemTime,
    ) -> Result<()> {
        let covered = match rule {
            ResourceMatch::Exact => self.resource == expected_resource,
            ResourceMatch::SegmentPrefix => resource_covers(&self.resource, expected_resource),
        };
        if !covered {
            let relation = match rule {
                ResourceMatch::Exact => "not",
                ResourceMatch::SegmentPrefix => "which does not cover",
            };
            return Err(Error::Unauthenticated(format!(
                "the SAS token is for {:?}, {relation} {:?}",
                self.resource, expected_resource
            )));
        }
        let now_secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now_secs >= self.expiry {
            return Err(Error::Expired(format!(
                "the SAS token for {:?} expired at {} (now {})",
                self.resource, self.expiry, now_secs
            )));
        }
        Ok(())
    }

    /// The resource the token grants (`sr`, decoded).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// When the token expires (`se`).
    pub fn expiry(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expiry)
    }

    /// When the token expires, in seconds since the Unix epoch (`se`).
    pub fn expiry_unix(&self) -> u64 {
        self.expiry
    }

    /// The key name (`skn`, decoded), if the token has one.
    pub fn key_name(&self) -> Option<&str> {
        self.key_name.as_deref()
    }

    /// The token as it goes on the wire. It is a bearer credential until it expires: keep it out
    /// of logs.
    pub fn expose_secret(&self) -> &str {
        &self.token
    }
}

impl fmt::Debug for SasToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SasToken")
            .field("resource", &self.resource)
            .field("expiry", &self.expiry)
            .field("key_name", &self.key_name)
            .field("signature", &"<redacted>")
            .finish()
    }
}

fn malformed(reason: impl fmt::Display) -> Error {
    Error::Unauthenticated(format!("malformed SAS token: {reason}"))
}

fn hmac_key(key: &SymmetricKey) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret())
}

fn string_to_sign(encoded_resource: &str, expiry_text: &str) -> String {
    format!("{encoded_resource}\n{expiry_text}")
}

/// How a token's resource must relate to the resource being accessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResourceMatch {
    /// The same resource (a DPS registration: always exactly `{scope}/registrations/{id}`).
    Exact,
    /// The same, or a prefix ending at a `/` (IoT Hub, PROTOCOLS.md §2.3).
    SegmentPrefix,
}

/// Whether a token for `granted` may be used for `wanted`: the same, or a prefix ending at a
/// path-segment boundary.
fn resource_covers(granted: &str, wanted: &str) -> bool {
    match wanted.strip_prefix(granted) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') || granted.ends_with('/'),
        None => false,
    }
}

#[derive(Clone, Copy)]
enum HexCase {
    Upper,
    Lower,
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str, case: HexCase) -> String {
    let digits: &[u8; 16] = match case {
        HexCase::Upper => b"0123456789ABCDEF",
        HexCase::Lower => b"0123456789abcdef",
    };
    let mut out = String::with_capacity(text.len() * 3);
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(digits[usize::from(b >> 4)]));
            out.push(char::from(digits[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// Decodes `%XX` escapes (either hex case). `+` stays `+`: SAS fields are not form-encoded, and
/// a raw `+` in a base64 signature must survive. `None` for a bad escape or non-UTF-8 result.
fn url_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = char::from(hex[0]).to_digit(16)?;
            let lo = char::from(hex[1]).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PROTOCOLS.md §5 V3: official HMAC key (azure-iot-sdk-python signing-mechanism test).
    const V3_KEY: &str = "NMgJDvdKTxjLi+xBxxkDDEwDJxEvOE5u8BiT0mVgPeg=";
    const V4_RESOURCE: &str = "myiothub.azure-devices.net/devices/my_device";
    const V4_EXPIRY: u64 = 1_578_941_692;

    fn key() -> SymmetricKey {
        SymmetricKey::from_base64(V3_KEY).unwrap()
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn b64_hmac(key: &SymmetricKey, message: &str) -> String {
        STANDARD.encode(hmac::sign(&hmac_key(key), message.as_bytes()).as_ref())
    }

    #[test]
    fn hmac_primitive_matches_official_vector_v3() {
        assert_eq!(
            b64_hmac(&key(), "sign this message"),
            "8NJRMT83CcplGrAGaUVIUM/md5914KpWVNngSVoF9/M="
        );
    }

    #[test]
    fn string_to_sign_matches_vector_v4() {
        // az-sdk-c hub SAS test: the exact string-to-sign.
        assert_eq!(
            string_to_sign(
                &url_encode(V4_RESOURCE, HexCase::Upper),
                &V4_EXPIRY.to_string()
            ),
            "myiothub.azure-devices.net%2Fdevices%2Fmy_device\n1578941692"
        );
    }

    #[test]
    fn sign_matches_end_to_end_vector_v5() {
        let token = SasToken::sign(V4_RESOURCE, &key(), None, at(V4_EXPIRY)).unwrap();
        assert_eq!(
            token.expose_secret(),
            "SharedAccessSignature sr=myiothub.azure-devices.net%2Fdevices%2Fmy_device\
             &sig=dIMMdDDBGFR8eqAfYkiMxoOphaFMPtMgj7Wg%2FYB1AvU%3D&se=1578941692"
        );
        assert_eq!(token.resource(), V4_RESOURCE);
        assert_eq!(token.expiry_unix(), V4_EXPIRY);
        assert_eq!(token.expiry(), at(V4_EXPIRY));
        assert_eq!(token.key_name(), None);
    }

    #[test]
    fn verifies_a_dps_token_spelled_like_az_sdk_c_vector_v6() {
        // V6: DPS clients sign `…%2fregistrations%2f…` with lower-case hex. Build such a token by
        // hand, exactly as azure-sdk-for-c would, and check that it verifies.
        let to_sign = "0neFEEDC0DE%2fregistrations%2fmyRegistrationId\n1578941692";
        let sig = url_encode(&b64_hmac(&key(), to_sign), HexCase::Lower);
        let wire = format!(
            "SharedAccessSignature sr=0neFEEDC0DE%2fregistrations%2fmyRegistrationId\
             &sig={sig}&se=1578941692&skn=registration"
        );
        let token = SasToken::parse(&wire).unwrap();
        assert_eq!(
            token.resource(),
            "0neFEEDC0DE/registrations/myRegistrationId"
        );
        assert_eq!(token.key_name(), Some("registration"));
        token
            .verify_parsed(
                &key(),
                "0neFEEDC0DE/registrations/myRegistrationId",
                at(V4_EXPIRY - 1),
            )
            .unwrap();
    }

    #[test]
    fn hex_case_of_sr_is_tolerated_but_letters_of_the_resource_are_not() {
        let signed = SasToken::sign("Scope/registrations/dev-1", &key(), None, at(2_000)).unwrap();
        // Re-spell sr with lower-case hex: same resource, still verifies.
        let relaxed = signed.expose_secret().replace("%2F", "%2f");
        assert_ne!(relaxed, signed.expose_secret());
        SasToken::verify(&relaxed, &key(), "Scope/registrations/dev-1", at(1_000)).unwrap();
        // Change the case of the resource itself: refused.
        let other = signed.expose_secret().replace("Scope", "scope");
        let err =
            SasToken::verify(&other, &key(), "scope/registrations/dev-1", at(1_000)).unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    }

    #[test]
    fn round_trip_with_key_name_and_field_order() {
        let token = SasToken::sign(
            "hub.example/devices/a b+c",
            &key(),
            Some("iothub owner"),
            at(2_000),
        )
        .unwrap();
        assert!(
            token
                .expose_secret()
                .starts_with("SharedAccessSignature sr=hub.example%2Fdevices%2Fa%20b%2Bc&sig=")
        );
        assert!(
            token
                .expose_secret()
                .ends_with("&se=2000&skn=iothub%20owner")
        );
        let parsed = SasToken::parse(token.expose_secret()).unwrap();
        assert_eq!(parsed.resource(), "hub.example/devices/a b+c");
        assert_eq!(parsed.key_name(), Some("iothub owner"));
        parsed
            .verify_parsed(&key(), "hub.example/devices/a b+c", at(1_999))
            .unwrap();

        // The docs list sig/se/skn/sr: field order is not significant.
        let body = token.expose_secret().strip_prefix(PREFIX).unwrap();
        let mut fields: Vec<&str> = body.split('&').collect();
        fields.reverse();
        let reordered = format!("{PREFIX}{}", fields.join("&"));
        SasToken::verify(&reordered, &key(), "hub.example/devices/a b+c", at(1_000)).unwrap();
    }

    #[test]
    fn expiry_is_reported_only_for_a_genuine_token() {
        let token = SasToken::sign(V4_RESOURCE, &key(), None, at(V4_EXPIRY)).unwrap();
        let wire = token.expose_secret();
        SasToken::verify(wire, &key(), V4_RESOURCE, at(V4_EXPIRY - 1)).unwrap();
        for now in [V4_EXPIRY, V4_EXPIRY + 1] {
            let err = SasToken::verify(wire, &key(), V4_RESOURCE, at(now)).unwrap_err();
            assert!(matches!(err, Error::Expired(_)), "{err}");
        }
        let other = SymmetricKey::new(vec![7u8; 32]).unwrap();
        let err = SasToken::verify(wire, &other, V4_RESOURCE, at(V4_EXPIRY + 1)).unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
    }

    #[test]
    fn resource_must_cover_the_expected_one_by_path_segment() {
        let token = SasToken::sign("hub/devices/dev", &key(), None, at(2_000)).unwrap();
        let wire = token.expose_secret();
        let ok = |r: &str| SasToken::verify(wire, &key(), r, at(1_000));
        ok("hub/devices/dev").unwrap();
        ok("hub/devices/dev/modules/m1").unwrap();
        for wrong in [
            "hub/devices/device",
            "hub/devices/de",
            "hub/devices",
            "other",
        ] {
            let err = ok(wrong).unwrap_err();
            assert!(matches!(err, Error::Unauthenticated(_)), "{wrong}: {err}");
        }
        let hub_wide = SasToken::sign("hub/", &key(), Some("service"), at(2_000)).unwrap();
        SasToken::verify(hub_wide.expose_secret(), &key(), "hub/devices/x", at(1)).unwrap();
    }

    #[test]
    fn tampering_is_refused() {
        let token = SasToken::sign("hub/devices/dev", &key(), None, at(2_000)).unwrap();
        let wire = token.expose_secret().to_owned();
        let sig_at = wire.find("sig=").unwrap() + 4;
        // Flip one character of the signature (keeping valid base64).
        let mut tampered = wire.clone().into_bytes();
        tampered[sig_at] = if tampered[sig_at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        // Extend the expiry; point it at another device.
        let later = wire.replace("se=2000", "se=9000");
        let elsewhere = wire.replace("dev&", "dev2&");
        for (bad, resource) in [
            (&tampered, "hub/devices/dev"),
            (&later, "hub/devices/dev"),
            (&elsewhere, "hub/devices/dev2"),
        ] {
            let err = SasToken::verify(bad, &key(), resource, at(1_000)).unwrap_err();
            assert!(matches!(err, Error::Unauthenticated(_)), "{err}");
            let sig = &wire[sig_at..wire[sig_at..].find('&').unwrap() + sig_at];
            assert!(!err.to_string().contains(sig));
            assert!(!err.to_string().contains(&*key().to_base64()));
        }
    }

    #[test]
    fn malformed_tokens_are_unauthenticated_without_echoing_the_signature() {
        let good = SasToken::sign("hub/devices/dev", &key(), None, at(2_000)).unwrap();
        let wire = good.expose_secret();
        let sig = wire
            .split('&')
            .find_map(|f| f.strip_prefix("sig="))
            .unwrap();
        let cases = [
            String::new(),
            "Bearer abc".to_owned(),
            wire.replacen("SharedAccessSignature ", "SharedAccessSignature", 1),
            wire.replace("&se=2000", ""),
            wire.replace("sr=hub%2Fdevices%2Fdev&", ""),
            wire.replace(&format!("sig={sig}&"), ""),
            format!("{wire}&se=2000"),
            format!("{wire}&foo=bar"),
            format!("{wire}&skn="),
            format!("{wire}&noequals"),
            wire.replace("se=2000", "se=-5"),
            wire.replace("se=2000", "se=2e3"),
            wire.replace("se=2000", "se=99999999999999999999999"),
            wire.replace("se=2000", "se="),
            wire.replace("sr=hub%2Fdevices%2Fdev", "sr="),
            wire.replace("sr=hub%2Fdevices%2Fdev", "sr=hub%2"),
            wire.replace("sr=hub%2Fdevices%2Fdev", "sr=hub%ZZ"),
            wire.replace("sr=hub%2Fdevices%2Fdev", "sr=%FF"),
            wire.replace(sig, "notbase64!!"),
            wire.replace(sig, "AAAA"),
            format!("{wire}&sr={}", "x".repeat(MAX_SAS_TOKEN_BYTES)),
        ];
        for case in &cases {
            let err = SasToken::verify(case, &key(), "hub/devices/dev", at(1_000)).unwrap_err();
            assert!(matches!(err, Error::Unauthenticated(_)), "{case:?}: {err}");
            assert!(!err.to_string().contains(sig), "{err}");
        }
    }

    #[test]
    fn raw_plus_and_slash_in_sig_are_accepted() {
        // Some tools put the base64 signature in without URL-encoding it. Find expiries whose
        // signatures hold a '+' and a '/', and check both survive unencoded.
        let mut seen = (false, false);
        for expiry in 2_000..2_100 {
            let good = SasToken::sign("hub/devices/dev", &key(), None, at(expiry)).unwrap();
            let wire = good.expose_secret();
            let sig = wire
                .split('&')
                .find_map(|f| f.strip_prefix("sig="))
                .unwrap();
            let raw = url_decode(sig).unwrap();
            if !(raw.contains('+') || raw.contains('/')) {
                continue;
            }
            seen = (seen.0 || raw.contains('+'), seen.1 || raw.contains('/'));
            let unencoded = wire.replace(sig, &raw);
            SasToken::verify(&unencoded, &key(), "hub/devices/dev", at(1_000)).unwrap();
        }
        assert_eq!(seen, (true, true));
    }

    #[test]
    fn sign_rejects_bad_input() {
        let k = key();
        for (resource, name, expiry) in [
            ("", None, at(1)),
            ("r", Some(""), at(1)),
            ("r", None, UNIX_EPOCH - Duration::from_secs(1)),
        ] {
            let err = SasToken::sign(resource, &k, name, expiry).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        let huge = "r".repeat(MAX_SAS_TOKEN_BYTES);
        assert!(SasToken::sign(&huge, &k, None, at(1)).is_err());
    }

    #[test]
    fn debug_never_shows_the_signature() {
        let token =
            SasToken::sign(V4_RESOURCE, &key(), Some("registration"), at(V4_EXPIRY)).unwrap();
        let debug = format!("{token:?}");
        assert_eq!(
            debug,
            "SasToken { resource: \"myiothub.azure-devices.net/devices/my_device\", \
             expiry: 1578941692, key_name: Some(\"registration\"), signature: \"<redacted>\" }"
        );
        assert!(!debug.contains("dIMMdD"));
    }

    #[test]
    fn url_encoding_is_rfc3986_unreserved() {
        assert_eq!(url_encode("aZ09-._~", HexCase::Upper), "aZ09-._~");
        assert_eq!(
            url_encode("/+= :é", HexCase::Upper),
            "%2F%2B%3D%20%3A%C3%A9"
        );
        assert_eq!(
            url_encode("/+= :é", HexCase::Lower),
            "%2f%2b%3d%20%3a%c3%a9"
        );
        assert_eq!(url_decode("%2F%2b+%C3%A9").as_deref(), Some("/++é"));
    }
}
