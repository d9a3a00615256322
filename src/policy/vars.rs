//! Policy variables (`${iot:ClientId}` …) and condition keys, and pattern parsing.

use std::fmt;

use super::pattern::{Pattern, Token};

/// A distinguished-name attribute usable in `iot:Certificate.Subject.*` / `Issuer.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DnAttr {
    CommonName,
    Organization,
    OrganizationalUnit,
    Country,
    State,
    Locality,
    SerialNumber,
    DistinguishedNameQualifier,
    Title,
    Surname,
    GivenName,
    Initials,
    Pseudonym,
    GenerationQualifier,
}

impl DnAttr {
    pub(crate) const ALL: [DnAttr; 14] = [
        DnAttr::CommonName,
        DnAttr::Organization,
        DnAttr::OrganizationalUnit,
        DnAttr::Country,
        DnAttr::State,
        DnAttr::Locality,
        DnAttr::SerialNumber,
        DnAttr::DistinguishedNameQualifier,
        DnAttr::Title,
        DnAttr::Surname,
        DnAttr::GivenName,
        DnAttr::Initials,
        DnAttr::Pseudonym,
        DnAttr::GenerationQualifier,
    ];

    /// The name used in policy variables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DnAttr::CommonName => "CommonName",
            DnAttr::Organization => "Organization",
            DnAttr::OrganizationalUnit => "OrganizationalUnit",
            DnAttr::Country => "Country",
            DnAttr::State => "State",
            DnAttr::Locality => "Locality",
            DnAttr::SerialNumber => "SerialNumber",
            DnAttr::DistinguishedNameQualifier => "DistinguishedNameQualifier",
            DnAttr::Title => "Title",
            DnAttr::Surname => "Surname",
            DnAttr::GivenName => "GivenName",
            DnAttr::Initials => "Initials",
            DnAttr::Pseudonym => "Pseudonym",
            DnAttr::GenerationQualifier => "GenerationQualifier",
        }
    }

    /// The attribute's OID, as x509-parser prints it.
    pub(crate) fn oid(self) -> &'static str {
        match self {
            DnAttr::CommonName => "2.5.4.3",
            DnAttr::Surname => "2.5.4.4",
            DnAttr::SerialNumber => "2.5.4.5",
            DnAttr::Country => "2.5.4.6",
            DnAttr::Locality => "2.5.4.7",
            DnAttr::State => "2.5.4.8",
            DnAttr::Organization => "2.5.4.10",
            DnAttr::OrganizationalUnit => "2.5.4.11",
            DnAttr::Title => "2.5.4.12",
            DnAttr::GivenName => "2.5.4.42",
            DnAttr::Initials => "2.5.4.43",
            DnAttr::GenerationQualifier => "2.5.4.44",
            DnAttr::DistinguishedNameQualifier => "2.5.4.46",
            DnAttr::Pseudonym => "2.5.4.65",
        }
    }
}

/// A policy variable or condition key.
///
/// Attribute names are kept as an index into the principal's attribute list would not survive
/// re-use across principals, so the name is interned as a small id into the policy's own table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Var {
    /// `iot:ClientId`: the MQTT client id.
    ClientId,
    /// `iot:Connection.Thing.ThingName`.
    ThingName,
    /// `iot:Connection.Thing.ThingTypeName`.
    ThingTypeName,
    /// `iot:Connection.Thing.Attributes[name]`, name interned in the policy (index).
    ThingAttribute(u16),
    /// `iot:Connection.Thing.IsAttached`: "true" or "false".
    IsAttached,
    /// `iot:Certificate.Subject.<attr>`.
    Subject(DnAttr),
    /// `iot:Certificate.Issuer.<attr>`.
    Issuer(DnAttr),
    /// `iot:Certificate.SerialNumber`.
    CertSerial,
    /// `iot:CertificateId`: the SHA-256 fingerprint AWS uses as the certificate id.
    CertId,
    /// `fleetkit:DeviceId`: the registry's device id (portable alias).
    DeviceId,
    /// `fleetkit:User`: the subject of a verified user/app token.
    User,
    /// `iot:ConnectAttributes` (condition key only; multi-valued).
    ConnectAttributes,
    /// `fleetkit:Principal.ThingGroups` (condition key only; multi-valued, parents included).
    PrincipalGroups,
    /// `fleetkit:Target.ThingGroups` (condition key only; multi-valued): the groups of the
    /// device a request acts on, for user and application principals.
    TargetGroups,
}

impl Var {
    /// Whether the key has several values (only usable in conditions).
    pub(crate) fn is_multi_valued(self) -> bool {
        matches!(
            self,
            Var::ConnectAttributes | Var::PrincipalGroups | Var::TargetGroups
        )
    }
}

/// A variable's display form needs the policy's attribute-name table; this wrapper carries it.
pub(crate) struct VarDisplay<'a>(pub(crate) Var, pub(crate) &'a [Box<str>]);

impl fmt::Display for VarDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Var::ClientId => f.write_str("iot:ClientId"),
            Var::ThingName => f.write_str("iot:Connection.Thing.ThingName"),
            Var::ThingTypeName => f.write_str("iot:Connection.Thing.ThingTypeName"),
            Var::ThingAttribute(i) => write!(
                f,
                "iot:Connection.Thing.Attributes[{}]",
                self.1.get(usize::from(i)).map_or("?", |s| s)
            ),
            Var::IsAttached => f.write_str("iot:Connection.Thing.IsAttached"),
            Var::Subject(a) => write!(f, "iot:Certificate.Subject.{}", a.name()),
            Var::Issuer(a) => write!(f, "iot:Certificate.Issuer.{}", a.name()),
            Var::CertSerial => f.write_str("iot:Certificate.SerialNumber"),
            Var::CertId => f.write_str("iot:CertificateId"),
            Var::DeviceId => f.write_str("fleetkit:DeviceId"),
            Var::User => f.write_str("fleetkit:User"),
            Var::ConnectAttributes => f.write_str("iot:ConnectAttributes"),
            Var::PrincipalGroups => f.write_str("fleetkit:Principal.ThingGroups"),
            Var::TargetGroups => f.write_str("fleetkit:Target.ThingGroups"),
        }
    }
}

/// Interns thing-attribute names for one policy.
#[derive(Default, Debug, Clone)]
pub(crate) struct Names {
    pub(crate) attributes: Vec<Box<str>>,
}

impl Names {
    fn intern(&mut self, name: &str) -> Result<u16, String> {
        if let Some(i) = self.attributes.iter().position(|a| &**a == name) {
            return Ok(i as u16);
        }
        if self.attributes.len() >= usize::from(u16::MAX) {
            return Err("too many distinct attribute names".into());
        }
        self.attributes.push(name.into());
        Ok((self.attributes.len() - 1) as u16)
    }
}

/// Parses a variable or condition-key name (without `${` `}`).
pub(crate) fn parse_var(name: &str, names: &mut Names) -> Result<Var, String> {
    let simple = match name {
        "iot:ClientId" => Some(Var::ClientId),
        "iot:Connection.Thing.ThingName" => Some(Var::ThingName),
        "iot:Connection.Thing.ThingTypeName" => Some(Var::ThingTypeName),
        "iot:Connection.Thing.IsAttached" => Some(Var::IsAttached),
        "iot:Certificate.SerialNumber" => Some(Var::CertSerial),
        "iot:CertificateId" => Some(Var::CertId),
        "fleetkit:DeviceId" => Some(Var::DeviceId),
        "fleetkit:User" => Some(Var::User),
        "iot:ConnectAttributes" => Some(Var::ConnectAttributes),
        "fleetkit:Principal.ThingGroups" => Some(Var::PrincipalGroups),
        "fleetkit:Target.ThingGroups" => Some(Var::TargetGroups),
        _ => None,
    };
    if let Some(v) = simple {
        return Ok(v);
    }
    if let Some(rest) = name.strip_prefix("iot:Connection.Thing.Attributes[") {
        let attr = rest
            .strip_suffix(']')
            .filter(|a| !a.is_empty() && !a.contains(['[', ']']))
            .ok_or_else(|| format!("malformed thing attribute variable `{name}`"))?;
        return names.intern(attr).map(Var::ThingAttribute);
    }
    for (prefix, make) in [
        (
            "iot:Certificate.Subject.",
            Var::Subject as fn(DnAttr) -> Var,
        ),
        ("iot:Certificate.Issuer.", Var::Issuer as fn(DnAttr) -> Var),
    ] {
        if let Some(attr) = name.strip_prefix(prefix) {
            return DnAttr::ALL
                .iter()
                .find(|a| a.name() == attr)
                .map(|a| make(*a))
                .ok_or_else(|| format!("unknown certificate attribute in `{name}`"));
        }
    }
    Err(format!("unknown policy variable `{name}`"))
}

/// Parses an IAM-style pattern: `*`, `?`, `${variable}`, and the escapes `${*}`, `${?}`, `${$}`.
pub(crate) fn parse_pattern_with(s: &str, names: &mut Names) -> Result<Pattern, String> {
    parse_value(s, names, true, false)
}

/// Parses a pattern or, with `wildcards` false, a string whose only special part is
/// `${variable}` (StringEquals and friends treat `*` and `?` literally). `fold_case` makes the
/// comparison ASCII case-insensitive.
pub(crate) fn parse_value(
    s: &str,
    names: &mut Names,
    wildcards: bool,
    fold_case: bool,
) -> Result<Pattern, String> {
    let mut tokens = Vec::new();
    let mut lit = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    let flush = |lit: &mut Vec<u8>, tokens: &mut Vec<Token>| {
        if !lit.is_empty() {
            tokens.push(Token::Literal(std::mem::take(lit).into_boxed_slice()));
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'*' if wildcards => {
                flush(&mut lit, &mut tokens);
                tokens.push(Token::Star);
                i += 1;
            }
            b'?' if wildcards => {
                flush(&mut lit, &mut tokens);
                tokens.push(Token::AnyChar);
                i += 1;
            }
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                let end = s[i + 2..]
                    .find('}')
                    .ok_or_else(|| format!("unterminated `${{` in `{s}`"))?
                    + i
                    + 2;
                let name = &s[i + 2..end];
                match name {
                    "*" | "?" | "$" => lit.extend_from_slice(name.as_bytes()),
                    _ => {
                        let var = parse_var(name, names)?;
                        if var.is_multi_valued() {
                            return Err(format!(
                                "`{name}` has several values and can only be used as a condition key"
                            ));
                        }
                        flush(&mut lit, &mut tokens);
                        tokens.push(Token::Var(var));
                    }
                }
                i = end + 1;
            }
            b => {
                lit.push(b);
                i += 1;
            }
        }
    }
    flush(&mut lit, &mut tokens);
    Ok(Pattern::new(tokens, fold_case))
}

#[cfg(test)]
pub(crate) fn parse_pattern(s: &str) -> Result<Pattern, String> {
    parse_pattern_with(s, &mut Names::default())
}
