//! Mint a fleet's CA hierarchy and a device certificate into a folder.
//!
//! ```text
//! cargo run --example pki                          # ./fleetkit-pki, device sensor-0001
//! cargo run --example pki -- DIR DEVICE_ID
//! ```
//!
//! The first run creates a root CA and an issuing intermediate; later runs import them from the
//! folder and issue another device certificate. The device key is generated "on the device"
//! and only a CSR reaches the CA. Private keys are written 0600, atomically.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use fleetkit::identity::{DeviceId, SoftwareKey, X509Credential};
use fleetkit::pki::{
    CaOptions, Certificate, CertificateAuthority, ChainVerifier, CrlOptions, DeviceCertOptions,
    build_csr,
};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "fleetkit-pki".into()));
    let device = args.next().unwrap_or_else(|| "sensor-0001".into());
    match run(&dir, &device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> fleetkit::Result<String> {
    std::fs::read_to_string(path).map_err(|e| fleetkit::Error::Io {
        path: Some(path.to_path_buf()),
        source: e,
    })
}

fn write_public(path: &Path, text: &str) -> fleetkit::Result<()> {
    std::fs::write(path, text).map_err(|e| fleetkit::Error::Io {
        path: Some(path.to_path_buf()),
        source: e,
    })
}

fn describe(role: &str, cert: &Certificate, file: &str) {
    println!("  {role:<13} {file}");
    println!("      subject      {}", cert.subject());
    println!("      issuer       {}", cert.issuer());
    println!("      serial       {}", cert.serial_hex());
    println!(
        "      valid        {} .. {}",
        cert.not_before().date(),
        cert.not_after().date()
    );
    if cert.is_ca() {
        let path_len = cert
            .path_len()
            .map_or("unconstrained".to_string(), |n| n.to_string());
        println!("      CA           yes, pathLen {path_len}");
    }
    println!("      sha256 id    {}", cert.fingerprint_sha256());
}

/// Loads the CA pair from `dir`, or creates it there on the first run.
fn hierarchy(dir: &Path) -> fleetkit::Result<(CertificateAuthority, CertificateAuthority, bool)> {
    let root_key = dir.join("root-ca.key");
    if root_key.exists() {
        let root = CertificateAuthority::from_pem(
            &read(&dir.join("root-ca.pem"))?,
            &read(&root_key)?,
            "",
        )?;
        let issuing = CertificateAuthority::from_pem(
            &read(&dir.join("issuing-ca.pem"))?,
            &read(&dir.join("issuing-ca.key"))?,
            &read(&dir.join("root-ca.pem"))?,
        )?;
        return Ok((root, issuing, false));
    }
    let root = CertificateAuthority::new_root(
        &CaOptions::new("fleetkit Demo Root CA")
            .with_organization("fleetkit demo")
            .with_path_len(1),
    )?;
    let issuing = root.new_intermediate(
        &CaOptions::new("fleetkit Demo Issuing CA")
            .with_organization("fleetkit demo")
            .with_validity(std::time::Duration::from_secs(5 * 365 * 86_400)),
    )?;
    // Certificates first, keys last: a key file exists only once its certificate does.
    write_public(&dir.join("root-ca.pem"), &root.certificate().to_pem())?;
    write_public(&dir.join("issuing-ca.pem"), &issuing.certificate().to_pem())?;
    software_key(&issuing).write_pkcs8_pem(dir.join("issuing-ca.key"))?;
    software_key(&root).write_pkcs8_pem(root_key)?;
    Ok((root, issuing, true))
}

/// The CA's key, exported (the demo keeps CA keys in files; a real fleet keeps them in an HSM).
fn software_key(ca: &CertificateAuthority) -> SoftwareKey {
    let der = ca
        .signer()
        .export_pkcs8_der()
        .expect("software CA keys export");
    SoftwareKey::from_pkcs8_der(&der).expect("a key fleetkit made re-imports")
}

fn run(dir: &Path, device: &str) -> fleetkit::Result<()> {
    let id = DeviceId::new(device)?;
    std::fs::create_dir_all(dir).map_err(|e| fleetkit::Error::Io {
        path: Some(dir.to_path_buf()),
        source: e,
    })?;
    let (root, issuing, created) = hierarchy(dir)?;

    // On the device: a new key, and a CSR signed with it. The key never leaves.
    let key = Arc::new(SoftwareKey::generate_p256()?);
    let csr = build_csr(key.clone(), &id)?;

    // At the CA: the CSR is verified and the CA decides the certificate's content.
    let cert = issuing.issue_for_csr(&id, &csr, &DeviceCertOptions::default())?;
    ChainVerifier::new(&[root.certificate().clone()])?
        .verify(&cert, &issuing.chain_for_devices())?;
    let mut chain = vec![cert.der().clone()];
    chain.extend(issuing.chain_for_devices().iter().map(|c| c.der().clone()));
    let credential = X509Credential::new(chain, key.clone())?;
    let crl = issuing.issue_crl(&CrlOptions::new(1, vec![]))?;

    let cert_file = format!("{id}.pem");
    let chain_file = format!("{id}-chain.pem");
    let key_file = format!("{id}.key");
    write_public(&dir.join(&cert_file), &cert.to_pem())?;
    write_public(&dir.join(&chain_file), &credential.chain_pem())?;
    write_public(&dir.join(format!("{id}.csr")), &csr.to_pem())?;
    write_public(&dir.join("issuing-ca.crl.pem"), &crl.to_pem())?;
    key.write_pkcs8_pem(dir.join(&key_file))?;

    println!("fleetkit PKI in {}", dir.display());
    if created {
        println!("  created a new root and issuing CA");
    } else {
        println!("  reused the CAs already in this folder");
    }
    describe("root CA", root.certificate(), "root-ca.pem, root-ca.key");
    describe(
        "issuing CA",
        issuing.certificate(),
        "issuing-ca.pem, issuing-ca.key, issuing-ca.crl.pem",
    );
    describe(
        "device",
        &cert,
        &format!("{cert_file}, {chain_file}, {key_file} (0600), {id}.csr"),
    );
    println!("      azure sha1   {}", cert.thumbprint_sha1());
    println!("\nchain verified (device -> issuing CA -> root). Check it with openssl:");
    println!(
        "  openssl verify -CAfile {0}/root-ca.pem -untrusted {0}/issuing-ca.pem {0}/{1}",
        dir.display(),
        cert_file
    );
    Ok(())
}
