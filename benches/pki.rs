//! Factory-rate PKI: device-certificate issuance and CSR signing, each beside the raw *ring*
//! crypto it cannot avoid, measured in the same run and printed as a ratio.
//!
//! `cargo bench --bench pki`. Criterion measures; afterwards the medians are read back from
//! criterion's `estimates.json` files and the ratios printed:
//!
//! - **issuance**: P-256 key generation + certificate build + CA signature + DER, against the
//!   baseline `ring keygen+sign` (generate a PKCS#8 P-256 key, load it, make one signature).
//! - **CSR signing**: parse a CSR, verify its signature, build and sign the certificate, against
//!   the baseline `ring verify+sign` (one ECDSA verification plus one signature).
//!
//! Goal from the foundation issue: issuance ≥ 0.8 of the raw-crypto rate.

mod support;
use support::median_ns;

use std::sync::Arc;
use std::time::Duration;

use std::hint::black_box;

use criterion::Criterion;
use fleetkit::identity::{DeviceId, Signer, SoftwareKey};
use fleetkit::pki::{CaOptions, CertificateAuthority, DeviceCertOptions, DeviceCsr, build_csr};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};

/// A message the size of a device certificate's TBSCertificate, so the baseline hashes as much
/// as the real signature does.
const TBS_SIZED: [u8; 330] = [0x5a; 330];

fn main() {
    let out = support::criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&out)
        .sample_size(60)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();

    let root = CertificateAuthority::new_root(&CaOptions::new("Bench Root").with_path_len(1))
        .expect("root");
    let ca = root
        .new_intermediate(&CaOptions::new("Bench Issuing CA"))
        .expect("intermediate");
    let id = DeviceId::new("bench-device-000001").expect("id");
    let options = DeviceCertOptions::default();
    let rng = SystemRandom::new();

    {
        let mut g = c.benchmark_group("issuance");
        g.bench_function("ring keygen+sign", |b| {
            b.iter(|| {
                let pkcs8 =
                    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                        .unwrap();
                let pair = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    pkcs8.as_ref(),
                    &rng,
                )
                .unwrap();
                black_box(pair.public_key().as_ref());
                black_box(pair.sign(&rng, &TBS_SIZED).unwrap());
            })
        });
        g.bench_function("fleetkit keygen+issue", |b| {
            b.iter(|| {
                let key = SoftwareKey::generate_p256().unwrap();
                black_box(ca.issue_der(&id, key.public_key_spki(), &options).unwrap());
            })
        });
        g.finish();
    }

    let device_key: Arc<dyn Signer> = Arc::new(SoftwareKey::generate_p256().unwrap());
    let csr_der = build_csr(device_key.clone(), &id).unwrap().der().to_vec();
    {
        let verify_key = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_ASN1,
            device_key.public_key_spki()[26..].to_vec(),
        );
        let ca_key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &SoftwareKey::generate_p256().unwrap().to_pkcs8_der(),
            &rng,
        )
        .unwrap();
        let sig = device_key
            .sign(
                fleetkit::identity::SignatureScheme::EcdsaP256Sha256,
                &TBS_SIZED,
            )
            .unwrap();
        let mut g = c.benchmark_group("csr");
        g.bench_function("ring verify+sign", |b| {
            b.iter(|| {
                verify_key.verify(&TBS_SIZED, &sig).unwrap();
                black_box(ca_key.sign(&rng, &TBS_SIZED).unwrap());
            })
        });
        g.bench_function("fleetkit csr parse+verify+issue", |b| {
            b.iter(|| {
                let csr = DeviceCsr::from_der(black_box(&csr_der)).unwrap();
                black_box(ca.issue_der(&id, csr.public_key_spki(), &options).unwrap());
            })
        });
        g.finish();
    }

    c.final_summary();

    println!("\n== PKI throughput (medians; ratio = fleetkit rate / raw ring rate) ==");
    let mut all_found = true;
    for (group, baseline, subject, goal) in [
        (
            "issuance",
            "ring keygen+sign",
            "fleetkit keygen+issue",
            Some(0.8),
        ),
        (
            "csr",
            "ring verify+sign",
            "fleetkit csr parse+verify+issue",
            None,
        ),
    ] {
        match (
            median_ns(&out, group, baseline),
            median_ns(&out, group, subject),
        ) {
            (Some(base), Some(ours)) => {
                let ratio = base / ours;
                println!(
                    "{group:>9}: {subject} {:>8.0}/s  vs  {baseline} {:>8.0}/s  ratio {ratio:.2}{}",
                    1e9 / ours,
                    1e9 / base,
                    goal.map(|g| format!(" (goal >= {g})")).unwrap_or_default()
                );
            }
            _ => {
                all_found = false;
                println!("{group:>9}: no estimates (filtered out or not run)");
            }
        }
    }
    if !all_found {
        println!("(run `cargo bench --bench pki` without a filter to get every ratio)");
    }
}
