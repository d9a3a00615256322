//! [`DeviceId`]: a device's name, checked against the rules of every cloud it may live on.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Which cloud's naming rule a [`DeviceId`] is checked against.
///
/// | rule | allowed | length | source |
/// |---|---|---|---|
/// | [`Aws`](IdRule::Aws) | thing name `[a-zA-Z0-9:_-]+` | 1–128 | AWS IoT `ThingName` shape |
/// | [`Azure`](IdRule::Azure) | ASCII letters and digits and `- : . + % _ # * ? ! ( ) , = @ ; $ '` | 1–128 | IoT Hub device identity |
/// | [`Gcp`](IdRule::Gcp) | `[a-zA-Z][-a-zA-Z0-9._+~%]+`, not starting with `goog` | 3–255 | Cloud IoT Core / ClearBlade |
/// | [`Portable`](IdRule::Portable) | a letter, then letters, digits, `-` and `_` (the intersection) | 3–128 | fleetkit |
///
/// [`DeviceId::new`] uses `Portable`, so an id accepted by default works on every backend,
/// as an MQTT client id, inside topic names and as a certificate common name: it holds none
/// of `/ + # * ?` and no `$`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IdRule {
    /// Valid on AWS, Azure and GCP at once (the default).
    Portable,
    /// AWS IoT Core thing names.
    Aws,
    /// Azure IoT Hub device ids.
    Azure,
    /// Google Cloud IoT Core / ClearBlade device ids.
    Gcp,
}

impl IdRule {
    fn name(self) -> &'static str {
        match self {
            IdRule::Portable => "portable device id (valid on AWS, Azure and GCP)",
            IdRule::Aws => "AWS IoT thing name",
            IdRule::Azure => "Azure IoT Hub device id",
            IdRule::Gcp => "GCP IoT Core device id",
        }
    }

    fn length(self) -> (usize, usize) {
        match self {
            IdRule::Portable => (3, 128),
            IdRule::Aws | IdRule::Azure => (1, 128),
            IdRule::Gcp => (3, 255),
        }
    }

    fn allows(self, position: usize, c: char) -> bool {
        let alnum = c.is_ascii_alphanumeric();
        match self {
            IdRule::Portable if position == 0 => c.is_ascii_alphabetic(),
            IdRule::Portable => alnum || c == '-' || c == '_',
            IdRule::Aws => alnum || matches!(c, ':' | '_' | '-'),
            IdRule::Azure => {
                alnum
                    || matches!(
                        c,
                        '-' | ':'
                            | '.'
                            | '+'
                            | '%'
                            | '_'
                            | '#'
                            | '*'
                            | '?'
                            | '!'
                            | '('
                            | ')'
                            | ','
                            | '='
                            | '@'
                            | ';'
                            | '$'
                            | '\''
                    )
            }
            IdRule::Gcp if position == 0 => c.is_ascii_alphabetic(),
            IdRule::Gcp => alnum || matches!(c, '-' | '.' | '_' | '+' | '~' | '%'),
        }
    }

    fn expected(self, position: usize) -> &'static str {
        match self {
            IdRule::Portable | IdRule::Gcp if position == 0 => {
                "the first character must be a letter"
            }
            IdRule::Portable => "allowed are letters, digits, '-' and '_'",
            IdRule::Aws => "allowed are letters, digits, ':', '_' and '-'",
            IdRule::Azure => "allowed are letters, digits and - : . + % _ # * ? ! ( ) , = @ ; $ '",
            IdRule::Gcp => "allowed are letters, digits and - . _ + ~ %",
        }
    }
}

/// A validated device identifier.
///
/// ```
/// use fleetkit::identity::{DeviceId, IdRule};
///
/// let id = DeviceId::new("sensor-0042")?;
/// assert_eq!(id.as_str(), "sensor-0042");
///
/// let err = DeviceId::new("sensor/0042").unwrap_err();
/// assert!(err.to_string().contains("'/' at position 6"));
///
/// // An id only Azure accepts:
/// let azure = DeviceId::with_rule("line.7@plant", IdRule::Azure)?;
/// # Ok::<(), fleetkit::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Validates `id` against the [portable rule](IdRule::Portable).
    pub fn new(id: impl Into<String>) -> Result<Self> {
        Self::with_rule(id, IdRule::Portable)
    }

    /// Validates `id` against one cloud's rule.
    ///
    /// The error is [`Error::InvalidInput`] with field `device id`, naming the first character
    /// that broke the rule and its position (counted in characters from 0), or the length limit.
    pub fn with_rule(id: impl Into<String>, rule: IdRule) -> Result<Self> {
        let id = id.into();
        let fail = |reason: String| {
            Err(Error::invalid(
                "device id",
                format!("{id:?} is not a valid {}: {reason}", rule.name()),
            ))
        };
        let (min, max) = rule.length();
        let len = id.chars().count();
        if len < min || len > max {
            return fail(format!(
                "length is {len}, must be {min} to {max} characters"
            ));
        }
        if let Some((position, c)) = id
            .chars()
            .enumerate()
            .find(|&(position, c)| !rule.allows(position, c))
        {
            return fail(format!(
                "character {c:?} at position {position} is not allowed ({})",
                rule.expected(position)
            ));
        }
        if matches!(rule, IdRule::Portable | IdRule::Gcp) && id.starts_with("goog") {
            return fail("ids may not start with \"goog\" (reserved by GCP)".into());
        }
        Ok(DeviceId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the id, returning the string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({:?})", self.0)
    }
}

impl FromStr for DeviceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DeviceId::new(s)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(id: &str, rule: IdRule) -> String {
        DeviceId::with_rule(id, rule).unwrap_err().to_string()
    }

    #[test]
    fn portable_accepts_ids_every_cloud_accepts() {
        for id in ["abc", "sensor-0042", "Line_7-Cell_3", &"a".repeat(128)] {
            let d = DeviceId::new(id).unwrap();
            for rule in [IdRule::Aws, IdRule::Azure, IdRule::Gcp] {
                DeviceId::with_rule(d.as_str(), rule)
                    .unwrap_or_else(|e| panic!("{id} portable but not {rule:?}: {e}"));
            }
        }
    }

    #[test]
    fn names_the_offending_character_and_position() {
        let r = reason("sensor/0042", IdRule::Portable);
        assert!(r.contains("'/' at position 6"), "{r}");
        let r = reason("dev+ice", IdRule::Portable);
        assert!(r.contains("'+' at position 3"), "{r}");
        let r = reason("1abc", IdRule::Portable);
        assert!(r.contains("first character must be a letter"), "{r}");
        let r = reason("dév", IdRule::Azure);
        assert!(r.contains("'é' at position 1"), "{r}");
    }

    #[test]
    fn rejects_mqtt_wildcards_and_dollar_by_default() {
        for bad in [
            "a#bc", "ab+c", "abc*", "ab?c", "$abc", "a/bc", "a bc", "ab.c", "ab:c",
        ] {
            let e = DeviceId::new(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidInput { ref field, .. } if field == "device id"));
        }
    }

    #[test]
    fn length_limits_per_rule() {
        assert!(reason("ab", IdRule::Portable).contains("length is 2"));
        assert!(reason(&"a".repeat(129), IdRule::Aws).contains("length is 129"));
        assert!(DeviceId::with_rule("a", IdRule::Aws).is_ok());
        assert!(DeviceId::with_rule("a".repeat(255), IdRule::Gcp).is_ok());
        assert!(reason("", IdRule::Azure).contains("length is 0"));
    }

    #[test]
    fn per_cloud_differences() {
        assert!(DeviceId::with_rule("thing:1", IdRule::Aws).is_ok());
        assert!(DeviceId::with_rule("thing.1", IdRule::Aws).is_err());
        assert!(DeviceId::with_rule("a.b@c$d#", IdRule::Azure).is_ok());
        assert!(DeviceId::with_rule("a/b", IdRule::Azure).is_err());
        assert!(DeviceId::with_rule("dev~1", IdRule::Gcp).is_ok());
        assert!(reason("google-1", IdRule::Gcp).contains("goog"));
        assert!(reason("google-1", IdRule::Portable).contains("goog"));
    }
}
