//! `fleetkit pki`: a CA hierarchy and device certificates, as files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
use fleetkit::pki::{CaOptions, Certificate, CertificateAuthority, DeviceCertOptions, DeviceCsr};

use crate::files::{self, PRIVATE, PUBLIC};
use crate::{CliResult, Failure};

const ROOT: &str = "root.pem";
const ROOT_KEY: &str = "root.key";
const INTERMEDIATE: &str = "intermediate.pem";
const INTERMEDIATE_KEY: &str = "intermediate.key";
const CHAIN: &str = "chain.pem";

/// Device certificate, its chain (leaf first, without the root) and key, in an output directory.
pub(crate) const DEVICE_CERT: &str = "device.pem";
pub(crate) const DEVICE_CHAIN: &str = "device-chain.pem";
pub(crate) const DEVICE_KEY: &str = "device.key";

/// `pki init`: a root CA (pathLen 1) and an issuing intermediate (pathLen 0) below it.
pub(crate) fn init(out: &Path, org: Option<&str>, force: bool) -> CliResult {
    let names = [ROOT, ROOT_KEY, INTERMEDIATE, INTERMEDIATE_KEY, CHAIN];
    let paths: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    files::refuse_existing(&paths, force)?;
    files::create_dir(out)?;

    let prefix = org.unwrap_or("fleetkit");
    let with_org = |o: CaOptions| match org {
        Some(org) => o.with_organization(org),
        None => o,
    };
    let root_key = Arc::new(SoftwareKey::generate_p256()?);
    let root = CertificateAuthority::new_root_with_key(
        &with_org(CaOptions::new(format!("{prefix} Root CA")).with_path_len(1)),
        root_key.clone(),
    )?;
    let issuing_key = Arc::new(SoftwareKey::generate_p256()?);
    let issuing = root.new_intermediate_with_key(
        &with_org(CaOptions::new(format!("{prefix} Device Issuing CA"))),
        issuing_key.clone(),
    )?;

    // Keys first: a certificate on disk without its key would be useless.
    files::write(
        &out.join(ROOT_KEY),
        root_key.to_pkcs8_pem()?.as_bytes(),
        PRIVATE,
        force,
    )?;
    files::write(
        &out.join(INTERMEDIATE_KEY),
        issuing_key.to_pkcs8_pem()?.as_bytes(),
        PRIVATE,
        force,
    )?;
    let root_pem = root.certificate().to_pem();
    let issuing_pem = issuing.certificate().to_pem();
    files::write(&out.join(ROOT), root_pem.as_bytes(), PUBLIC, force)?;
    files::write(
        &out.join(INTERMEDIATE),
        issuing_pem.as_bytes(),
        PUBLIC,
        force,
    )?;
    files::write(
        &out.join(CHAIN),
        format!("{issuing_pem}{root_pem}").as_bytes(),
        PUBLIC,
        force,
    )?;

    println!("created a CA hierarchy in {}", out.display());
    println!(
        "  root          {}  {}",
        root.certificate().subject(),
        short(&root.certificate().fingerprint_sha256())
    );
    println!(
        "  intermediate  {}  {}",
        issuing.certificate().subject(),
        short(&issuing.certificate().fingerprint_sha256())
    );
    println!("  files         {}", names.join(", "));
    Ok(())
}

/// Loads the issuing CA from a `pki init` directory: the intermediate if there is one, else
/// the root.
fn load_ca(dir: &Path) -> CliResult<CertificateAuthority> {
    let read = |name: &str| files::read_text(&dir.join(name));
    let root = read(ROOT)?;
    if dir.join(INTERMEDIATE).exists() {
        let cert = read(INTERMEDIATE)?;
        let key = read(INTERMEDIATE_KEY)?;
        Ok(CertificateAuthority::from_pem(&cert, &key, &root)?)
    } else {
        let key = read(ROOT_KEY)?;
        Ok(CertificateAuthority::from_pem(&root, &key, "")?)
    }
}

/// `pki issue`: a device certificate for a new key or a CSR.
pub(crate) fn issue(
    ca_dir: &Path,
    device: &str,
    out: &Path,
    csr: Option<&Path>,
    days: u32,
    force: bool,
) -> CliResult {
    let id = DeviceId::new(device)?;
    let ca = load_ca(ca_dir)?;
    let mut outputs = vec![out.join(DEVICE_CERT), out.join(DEVICE_CHAIN)];
    if csr.is_none() {
        outputs.push(out.join(DEVICE_KEY));
    }
    files::refuse_existing(&outputs, force)?;
    let options =
        DeviceCertOptions::default().with_validity(Duration::from_secs(u64::from(days) * 86_400));

    let (cert, key) = match csr {
        Some(path) => {
            let csr = DeviceCsr::from_pem(&files::read_text(path)?)
                .map_err(|e| Failure::new(format!("{}: {e}", path.display())))?;
            (ca.issue_for_csr(&id, &csr, &options)?, None)
        }
        None => {
            let key = SoftwareKey::generate_p256()?;
            (ca.issue(&id, key.public_key_spki(), &options)?, Some(key))
        }
    };
    files::create_dir(out)?;
    if let Some(key) = &key {
        files::write(
            &out.join(DEVICE_KEY),
            key.to_pkcs8_pem()?.as_bytes(),
            PRIVATE,
            force,
        )?;
    }
    let chain: String = std::iter::once(cert.clone())
        .chain(ca.chain_for_devices())
        .map(|c| c.to_pem())
        .collect();
    files::write(
        &out.join(DEVICE_CERT),
        cert.to_pem().as_bytes(),
        PUBLIC,
        force,
    )?;
    files::write(&out.join(DEVICE_CHAIN), chain.as_bytes(), PUBLIC, force)?;

    print_issued(&cert, out, key.is_some());
    Ok(())
}

fn print_issued(cert: &Certificate, out: &Path, with_key: bool) {
    println!(
        "issued a certificate for {} in {}",
        cert.subject_common_name().unwrap_or("?"),
        out.display()
    );
    println!("  id        {}", cert.fingerprint_sha256());
    println!("  issuer    {}", cert.issuer());
    println!("  expires   {}", cert.not_after().date());
    let mut names = vec![DEVICE_CERT, DEVICE_CHAIN];
    if with_key {
        names.push(DEVICE_KEY);
    }
    println!("  files     {}", names.join(", "));
}

/// The first 16 hex digits of an id, for display.
pub(crate) fn short(id: &str) -> &str {
    id.get(..16).unwrap_or(id)
}
