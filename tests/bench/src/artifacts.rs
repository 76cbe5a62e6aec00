//! Finds the `pmhost` binary and the bench plugin built with this program's own profile, building them first
//! (cargo does nothing when they are fresh), the way the integration harness builds its fixtures: same profile,
//! same target directory, never a hard-coded `target/debug`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The programs a benchmark drives.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The target directory everything is built into.
    pub target_dir: PathBuf,
    /// The `pmhost` binary.
    pub pmhost: PathBuf,
    /// The bench plugin (`libbench.so`).
    pub plugin: PathBuf,
    /// The cargo profile both were built with (`release` for real figures).
    pub profile: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The profile directory (`target/release`, `target/debug`...) of the running executable: binaries live in it,
/// tests and benches in its `deps/`.
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the running executable")?;
    let mut dir = exe.parent().context("the executable has a directory")?.to_owned();
    if dir.file_name().is_some_and(|name| name == "deps" || name == "examples") {
        dir = dir.parent().context("deps/ has a parent")?.to_owned();
    }
    Ok(dir)
}

/// Builds `pmhost` and the bench plugin with the profile this executable was built with, into the same target
/// directory, and returns their paths.
pub fn build() -> Result<Artifacts> {
    let profile_dir = profile_dir()?;
    let target_dir = profile_dir.parent().context("the profile directory has a parent")?;
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--quiet", "-p", "pmhost", "-p", "bench", "--profile", &profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(workspace_root());
    eprintln!("$ {cmd:?}");
    let out = cmd.output().with_context(|| format!("run {cargo}"))?;
    if !out.status.success() {
        bail!("building pmhost and the bench plugin failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let artifacts = Artifacts {
        target_dir: target_dir.to_owned(),
        pmhost: profile_dir.join("pmhost"),
        plugin: profile_dir.join("libbench.so"),
        profile,
    };
    for path in [&artifacts.pmhost, &artifacts.plugin] {
        if !path.is_file() {
            bail!("cargo built nothing at {}", path.display());
        }
    }
    Ok(artifacts)
}

/// What the queue figures drive, built like the rest: examples/pg-queue (a crate of its own, built into
/// `fixtures/` of the target directory, as the integration tests do) and the plain consumer binary.
#[derive(Debug, Clone)]
pub struct QueueArtifacts {
    /// `libpg_queue.so`.
    pub plugin: PathBuf,
    /// `pmhost-plain-consumer`.
    pub plain_consumer: PathBuf,
}

/// Builds examples/pg-queue and the plain consumer with the profile of `artifacts`.
pub fn build_queue(artifacts: &Artifacts) -> Result<QueueArtifacts> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let fixtures = artifacts.target_dir.join("fixtures");
    let manifest = workspace_root().join("examples/pg-queue/Cargo.toml");
    let builds: [(&[&str], &Path); 2] = [
        (&["-p", "pmhost-bench", "--bin", "pmhost-plain-consumer"], &artifacts.target_dir),
        (&["--manifest-path", manifest.to_str().context("utf-8 path")?], &fixtures),
    ];
    for (args, target_dir) in builds {
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--quiet"]).args(args).args(["--profile", &artifacts.profile, "--target-dir"]);
        cmd.arg(target_dir).current_dir(workspace_root());
        eprintln!("$ {cmd:?}");
        let out = cmd.output().with_context(|| format!("run {cargo}"))?;
        if !out.status.success() {
            bail!("building the queue benchmark failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let dir_name = artifacts.pmhost.parent().and_then(Path::file_name).context("profile dir name")?;
    let queue = QueueArtifacts {
        plugin: fixtures.join(dir_name).join("libpg_queue.so"),
        plain_consumer: artifacts.pmhost.with_file_name("pmhost-plain-consumer"),
    };
    for path in [&queue.plugin, &queue.plain_consumer] {
        if !path.is_file() {
            bail!("cargo built nothing at {}", path.display());
        }
    }
    Ok(queue)
}
