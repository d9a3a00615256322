//! Shared by the benches: where criterion writes, and reading a median back.

use std::path::{Path, PathBuf};

/// Criterion's output folder: `$CARGO_TARGET_DIR/criterion`, else next to the bench binary
/// (`<target>/release/deps/<bench>-<hash>` → `<target>/criterion`).
pub fn criterion_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("target")),
    };
    target.join("criterion")
}

/// The median (ns per iteration) criterion estimated for `group/id`.
pub fn median_ns(out: &Path, group: &str, id: &str) -> Option<f64> {
    let path = out.join(group).join(id).join("new").join("estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}
