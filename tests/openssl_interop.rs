//! Interop with the openssl command-line tool: what fleetkit writes, openssl accepts, and what
//! openssl makes, fleetkit uses. `.ci/run` installs openssl; without it these tests fail.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use fleetkit::identity::{DeviceId, KeyAlgorithm, SignatureScheme, Signer, SoftwareKey};
use fleetkit::pki::{
    CaOptions, Certificate, CertificateAuthority, ChainVerifier, Crl, CrlOptions,
    DeviceCertOptions, DeviceCsr, Revocation, RevocationReason, build_csr,
};
use fleetkit::{Error, Result};

/// Runs openssl in `dir`; returns (success, stdout + stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI must be installed (.ci/run installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = openssl(dir, args);
    assert!(ok, "openssl {args:?} failed:\n{text}");
    text
}

/// The DER inside the first PEM block of openssl's output.
fn spki_of(openssl_output: &str) -> Vec<u8> {
    pem::parse(openssl_output)
        .expect("openssl printed a PEM public key")
        .into_contents()
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap();
}

struct Hierarchy {
    root: CertificateAuthority,
    issuing: CertificateAuthority,
}

fn hierarchy() -> Result<Hierarchy> {
    let root = CertificateAuthority::new_root(
        &CaOptions::new("Interop Root")
            .with_organization("fleetkit tests")
            .with_path_len(1),
    )?;
    let issuing = root.new_intermediate(&CaOptions::new("Interop Issuing CA"))?;
    Ok(Hierarchy { root, issuing })
}

#[test]
fn openssl_verifies_root_intermediate_device_chain() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = hierarchy()?;
    let key = SoftwareKey::generate_p256()?;
    let id = DeviceId::new("sensor-0001")?;
    let leaf = h
        .issuing
        .issue(&id, key.public_key_spki(), &DeviceCertOptions::default())?;
    write(d, "root.pem", &h.root.certificate().to_pem());
    write(d, "ica.pem", &h.issuing.certificate().to_pem());
    write(d, "leaf.pem", &leaf.to_pem());

    let out = must(
        d,
        &[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ica.pem",
            "leaf.pem",
        ],
    );
    assert!(out.contains("leaf.pem: OK"), "{out}");

    // Without the intermediate there is no path: openssl must say so (the test can fail).
    let (ok, out) = openssl(d, &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(
        !ok,
        "verification without the intermediate must fail: {out}"
    );

    // The content the CA decided, read back by openssl.
    let text = must(d, &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(
        text.contains("CN=sensor-0001") || text.contains("CN = sensor-0001"),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    let ica_text = must(d, &["x509", "-in", "ica.pem", "-noout", "-text"]);
    assert!(ica_text.contains("CA:TRUE, pathlen:0"), "{ica_text}");
    assert!(
        ica_text.contains("Certificate Sign, CRL Sign"),
        "{ica_text}"
    );
    assert!(
        ica_text.contains("X509v3 Subject Key Identifier"),
        "{ica_text}"
    );
    let root_text = must(d, &["x509", "-in", "root.pem", "-noout", "-text"]);
    assert!(root_text.contains("CA:TRUE, pathlen:1"), "{root_text}");
    Ok(())
}

#[test]
fn fingerprints_and_serial_match_openssl() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = hierarchy()?;
    let key = SoftwareKey::generate_p256()?;
    let leaf = h.issuing.issue(
        &DeviceId::new("sensor-fp")?,
        key.public_key_spki(),
        &DeviceCertOptions::default(),
    )?;
    write(d, "leaf.pem", &leaf.to_pem());
    let colon_hex = |s: &str| -> String { s.split('=').nth(1).unwrap().trim().replace(':', "") };
    let sha256 = must(
        d,
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    assert_eq!(colon_hex(&sha256), leaf.thumbprint_sha256());
    assert_eq!(colon_hex(&sha256).to_lowercase(), leaf.fingerprint_sha256());
    let sha1 = must(
        d,
        &["x509", "-in", "leaf.pem", "-noout", "-fingerprint", "-sha1"],
    );
    assert_eq!(colon_hex(&sha1), leaf.thumbprint_sha1());
    let serial = must(d, &["x509", "-in", "leaf.pem", "-noout", "-serial"]);
    assert_eq!(colon_hex(&serial).to_lowercase(), leaf.serial_hex());
    // 127-bit random positive serials: 16 bytes, top bit clear.
    assert_eq!(leaf.serial().len(), 16);
    assert!(leaf.serial()[0] & 0x80 == 0);
    Ok(())
}

#[test]
fn openssl_accepts_our_csrs_for_p256_and_rsa() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    must(d, &["genrsa", "-traditional", "-out", "rsa.pem", "2048"]);
    let rsa: Arc<dyn Signer> = Arc::new(SoftwareKey::from_pem(
        &std::fs::read_to_string(d.join("rsa.pem")).unwrap(),
    )?);
    assert_eq!(rsa.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
    let p256: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256()?);
    for (name, signer) in [("p256", p256), ("rsa", rsa)] {
        let csr = build_csr(signer.clone(), &DeviceId::new("csr-device")?)?;
        let file = format!("{name}.csr");
        write(d, &file, &csr.to_pem());
        let out = must(d, &["req", "-verify", "-noout", "-in", &file, "-subject"]);
        assert!(
            out.contains("verify OK")
                || out.contains("Certificate request self-signature verify OK"),
            "{out}"
        );
        assert!(
            out.contains("CN=csr-device") || out.contains("CN = csr-device"),
            "{out}"
        );
        // openssl sees the same public key the signer holds.
        let pubkey = must(d, &["req", "-in", &file, "-noout", "-pubkey"]);
        assert_eq!(spki_of(&pubkey), signer.public_key_spki());
    }
    Ok(())
}

#[test]
fn openssl_accepts_our_crl_and_sees_the_revocation() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = hierarchy()?;
    let key_a = SoftwareKey::generate_p256()?;
    let key_b = SoftwareKey::generate_p256()?;
    let opts = DeviceCertOptions::default();
    let revoked = h.issuing.issue(
        &DeviceId::new("dev-revoked")?,
        key_a.public_key_spki(),
        &opts,
    )?;
    let good = h
        .issuing
        .issue(&DeviceId::new("dev-good")?, key_b.public_key_spki(), &opts)?;
    let crl = h.issuing.issue_crl(&CrlOptions::new(
        7,
        vec![Revocation::of(&revoked, RevocationReason::KeyCompromise)],
    ))?;
    let root_crl = h.root.issue_crl(&CrlOptions::new(1, vec![]))?;
    write(d, "root.pem", &h.root.certificate().to_pem());
    write(d, "ica.pem", &h.issuing.certificate().to_pem());
    write(d, "crl.pem", &crl.to_pem());
    write(d, "root-crl.pem", &root_crl.to_pem());
    write(d, "revoked.pem", &revoked.to_pem());
    write(d, "good.pem", &good.to_pem());

    let out = must(
        d,
        &[
            "crl", "-in", "crl.pem", "-CAfile", "ica.pem", "-noout", "-text",
        ],
    );
    assert!(out.contains("verify OK"), "{out}");
    assert!(out.contains("Key Compromise"), "{out}");
    assert!(out.contains("X509v3 CRL Number"), "{out}");
    assert!(
        out.to_uppercase()
            .contains(&revoked.serial_hex().to_uppercase()),
        "{out}"
    );

    let check = |leaf: &str| {
        openssl(
            d,
            &[
                "verify",
                "-crl_check_all",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "ica.pem",
                "-CRLfile",
                "crl.pem",
                "-CRLfile",
                "root-crl.pem",
                leaf,
            ],
        )
    };
    let (ok, out) = check("revoked.pem");
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = check("good.pem");
    assert!(ok, "{out}");

    // Our own parser and checker agree with openssl.
    let parsed = Crl::from_pem(&crl.to_pem())?;
    parsed.verify_signature(h.issuing.certificate())?;
    assert!(parsed.is_revoked(&revoked));
    assert!(!parsed.is_revoked(&good));
    assert_eq!(parsed.number(), Some(&[7u8][..]));
    assert_eq!(
        parsed.revocation_of(&revoked).unwrap().reason,
        Some(RevocationReason::KeyCompromise)
    );
    let verifier = ChainVerifier::new(&[h.root.certificate().clone()])?.with_crls([parsed]);
    let err = verifier
        .verify(&revoked, &[h.issuing.certificate().clone()])
        .unwrap_err();
    assert!(matches!(Error::from(err), Error::Revoked(_)));
    verifier.verify(&good, &[h.issuing.certificate().clone()])?;
    Ok(())
}

#[test]
fn openssl_crl_is_parsed_and_checked() -> Result<()> {
    // A CA and CRL made entirely by openssl (`openssl ca -gencrl`), read by fleetkit.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl_ca(d, "ec", "ca");
    write(d, "index.txt", "");
    write(d, "crlnumber", "1000\n");
    write(
        d,
        "ca.cnf",
        "[ca]\ndefault_ca=c\n[c]\ndatabase=index.txt\ncrlnumber=crlnumber\ndefault_md=sha256\ndefault_crl_days=30\n",
    );
    must(
        d,
        &[
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "ca.key", "-cert", "ca.pem", "-out",
            "crl.pem",
        ],
    );
    let ca = Certificate::from_pem(&std::fs::read_to_string(d.join("ca.pem")).unwrap())?;
    let crl = Crl::from_pem(&std::fs::read_to_string(d.join("crl.pem")).unwrap())?;
    crl.verify_signature(&ca)?;
    assert_eq!(crl.number(), Some(&[0x10u8, 0x00][..]));
    assert!(crl.entries().is_empty());
    assert!(crl.next_update().unwrap() > crl.this_update());
    Ok(())
}

/// Makes a CA with openssl: `kind` is "ec" (SEC1 key) or "rsa" (PKCS#1 key).
fn openssl_ca(d: &Path, kind: &str, name: &str) {
    let key = format!("{name}.key");
    let cert = format!("{name}.pem");
    match kind {
        "ec" => must(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                &key,
            ],
        ),
        _ => must(d, &["genrsa", "-traditional", "-out", &key, "2048"]),
    };
    must(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-out",
            &cert,
            "-days",
            "30",
            "-subj",
            &format!("/C=DE/O=openssl-made/CN={name} {kind} CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

#[test]
fn openssl_made_ca_is_imported_and_issues() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for kind in ["ec", "rsa"] {
        openssl_ca(d, kind, kind);
        let ca = CertificateAuthority::from_pem(
            &std::fs::read_to_string(d.join(format!("{kind}.pem"))).unwrap(),
            &std::fs::read_to_string(d.join(format!("{kind}.key"))).unwrap(),
            "",
        )?;
        let key = SoftwareKey::generate_p256()?;
        let leaf = ca.issue(
            &DeviceId::new(format!("dev-{kind}"))?,
            key.public_key_spki(),
            &DeviceCertOptions::default(),
        )?;
        // Validity is cut to the CA's 30 days.
        assert!(leaf.not_after() <= ca.certificate().not_after());
        let leaf_file = format!("leaf-{kind}.pem");
        write(d, &leaf_file, &leaf.to_pem());
        let out = must(
            d,
            &[
                "verify",
                "-x509_strict",
                "-purpose",
                "sslclient",
                "-CAfile",
                &format!("{kind}.pem"),
                &leaf_file,
            ],
        );
        assert!(out.contains(": OK"), "{out}");
        ChainVerifier::new(&[ca.certificate().clone()])?.verify(&leaf, &[])?;
        // An intermediate under the imported CA works too, and a CRL from it.
        let ica = ca.new_intermediate(&CaOptions::new(format!("sub of {kind}")))?;
        let crl = ica.issue_crl(&CrlOptions::new(1, vec![]))?;
        crl.verify_signature(ica.certificate())?;
    }
    Ok(())
}

#[test]
fn keys_cross_between_openssl_and_fleetkit() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // openssl → fleetkit: SEC1, PKCS#8 (EC and RSA), PKCS#1.
    must(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.pem",
        ],
    );
    must(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "sec1.pem",
            "-out",
            "ec-pkcs8.pem",
        ],
    );
    must(d, &["genrsa", "-traditional", "-out", "pkcs1.pem", "2048"]);
    must(
        d,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "pkcs1.pem",
            "-out",
            "rsa-pkcs8.pem",
        ],
    );
    for file in ["sec1.pem", "ec-pkcs8.pem", "pkcs1.pem", "rsa-pkcs8.pem"] {
        let key = SoftwareKey::from_pem(&std::fs::read_to_string(d.join(file)).unwrap())?;
        let pubkey = must(d, &["pkey", "-in", file, "-pubout"]);
        assert_eq!(
            spki_of(&pubkey),
            key.public_key_spki(),
            "{file}: public keys differ"
        );
        // A signature we make, openssl verifies.
        let scheme = key.schemes()[key.schemes().len() - 1];
        let sig = key.sign(scheme, b"interop message")?;
        std::fs::write(d.join("msg"), b"interop message").unwrap();
        std::fs::write(d.join("sig"), &sig).unwrap();
        std::fs::write(d.join("pub.pem"), &pubkey).unwrap();
        let mut args = vec!["dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig"];
        if scheme == SignatureScheme::RsaPssSha256 {
            args.extend([
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
            ]);
        }
        args.push("msg");
        let out = must(d, &args);
        assert!(out.contains("Verified OK"), "{file}: {out}");
        // fleetkit → openssl: our PKCS#8 (and SEC1 for EC) exports read back with the same key.
        write(d, "export.pem", &key.to_pkcs8_pem()?);
        let again = must(d, &["pkey", "-in", "export.pem", "-pubout"]);
        assert_eq!(
            spki_of(&again),
            key.public_key_spki(),
            "{file}: PKCS#8 export differs"
        );
        if key.algorithm() == KeyAlgorithm::EcdsaP256 {
            write(d, "export-sec1.pem", &key.to_sec1_pem()?);
            let again = must(d, &["ec", "-in", "export-sec1.pem", "-pubout"]);
            assert_eq!(
                spki_of(&again),
                key.public_key_spki(),
                "{file}: SEC1 export differs"
            );
        } else {
            assert!(matches!(key.to_sec1_pem(), Err(Error::NotSupported(_))));
        }
    }
    Ok(())
}

#[test]
fn openssl_made_csrs_are_verified_and_their_extensions_never_leak() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let h = hierarchy()?;
    must(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "dev.key",
        ],
    );
    // A CSR asking for a SAN and serverAuth: both ignored, the CA decides.
    must(
        d,
        &[
            "req",
            "-new",
            "-key",
            "dev.key",
            "-out",
            "plain.csr",
            "-subj",
            "/CN=dev-openssl/O=Evil",
            "-addext",
            "subjectAltName=DNS:bank.example",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
    );
    let csr = DeviceCsr::from_pem(&std::fs::read_to_string(d.join("plain.csr")).unwrap())?;
    assert_eq!(csr.requested_extensions().len(), 2);
    let cert = h.issuing.issue_for_csr(
        &DeviceId::new("dev-openssl")?,
        &csr,
        &DeviceCertOptions::default(),
    )?;
    assert!(cert.subject_alt_names().is_empty());
    assert_eq!(cert.subject(), "CN=dev-openssl");
    assert_eq!(
        cert.extended_key_usage(),
        &[fleetkit::pki::ExtendedKeyUsage::ClientAuth]
    );
    // The CSR is for dev-openssl: signing it for another device is refused.
    let err = h
        .issuing
        .issue_for_csr(
            &DeviceId::new("someone-else")?,
            &csr,
            &DeviceCertOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::PermissionDenied(_)), "{err}");

    // A CSR asking to be a CA is refused outright.
    must(
        d,
        &[
            "req",
            "-new",
            "-key",
            "dev.key",
            "-out",
            "ca.csr",
            "-subj",
            "/CN=dev-openssl",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
    let err = DeviceCsr::from_pem(&std::fs::read_to_string(d.join("ca.csr")).unwrap()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidInput { field, reason } if field == "csr" && reason.contains("CA:TRUE")),
        "{err}"
    );
    Ok(())
}
