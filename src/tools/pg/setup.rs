//! What a cluster needs before it starts: the server binaries, an unprivileged owner when
//! run as root, a template made by `initdb` once per version, and a free port.

use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::{
    sys::signal::Signal,
    unistd::{Gid, Uid, User, chown},
};

use super::{PgError, io};

pub(super) fn free_port() -> Result<u16, PgError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io("finding a free port"))?
        .port())
}

/// When the process is root, the user PostgreSQL runs as; otherwise `None` (run as ourselves).
pub(super) fn unprivileged_owner() -> Result<Option<(Uid, Gid)>, PgError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres") {
        Ok(Some(user)) => Ok(Some((user.uid, user.gid))),
        _ => Err(PgError::NoUnprivilegedUser),
    }
}

pub(super) fn give_to(path: &Path, owner: Option<(Uid, Gid)>) -> Result<(), PgError> {
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid))
            .map_err(|e| PgError::Failed(format!("chown {}: {e}", path.display())))?;
    }
    Ok(())
}

pub(super) fn run_as(command: &mut Command, owner: Option<(Uid, Gid)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid.as_raw()).gid(gid.as_raw());
        // HOME of root is not readable by `postgres`; give it somewhere harmless.
        command
            .env("HOME", std::env::temp_dir())
            .current_dir(std::env::temp_dir());
    }
}

/// The server must not outlive the process that started it, even one killed with SIGKILL.
pub(super) fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).map_err(std::io::Error::from)
        });
    }
}

/// The folder holding `initdb` and `postgres`: `PG_BIN_DIR` when set (and only it), else
/// PATH first, then the usual install folders.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        return has_both(&dir).then_some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    let mut candidates: Vec<PathBuf> = Vec::new();
    for pattern_root in [
        "/usr/lib/postgresql",
        "/opt/homebrew/opt",
        "/usr/local/opt",
        "/usr/pgsql",
    ] {
        if let Ok(entries) = fs::read_dir(pattern_root) {
            let mut dirs: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.is_some_and(|n| {
                        n.chars().next().is_some_and(|c| c.is_ascii_digit())
                            || n.starts_with("postgresql")
                    })
                })
                .map(|p| p.join("bin"))
                .collect();
            // Newest version first (numeric order, so 16 comes before 9.6).
            dirs.sort_by_key(|p| std::cmp::Reverse(version_key(p)));
            candidates.extend(dirs);
        }
    }
    candidates.extend(["/usr/local/pgsql/bin", "/opt/homebrew/bin"].map(PathBuf::from));
    candidates.into_iter().find(|dir| has_both(dir))
}

fn version_key(bin: &Path) -> Vec<u32> {
    let name = bin
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The initdb'd template for these binaries, made once and shared by every later cluster.
pub(super) fn template(bin_dir: &Path, owner: Option<(Uid, Gid)>) -> Result<PathBuf, PgError> {
    let version = Command::new(bin_dir.join("postgres"))
        .arg("--version")
        .output()
        .map_err(io("running postgres --version"))?;
    let version: String = String::from_utf8_lossy(&version.stdout)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let uid = nix::unistd::getuid().as_raw();
    let path = std::env::temp_dir().join(format!(
        "call-orchestrator-pg-template-{}-{uid}",
        version.trim_matches('_')
    ));
    if path.join("data").join("PG_VERSION").is_file() {
        return Ok(path);
    }
    // Build beside it and rename into place, so a racing process never sees half a template.
    let staging = tempfile::Builder::new()
        .prefix("call-orchestrator-pg-staging-")
        .tempdir()
        .map_err(io("creating the template folder"))?;
    give_to(staging.path(), owner)?;
    let mut command = Command::new(bin_dir.join("initdb"));
    command
        .arg("-D")
        .arg(staging.path().join("data"))
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ])
        .stdin(Stdio::null());
    run_as(&mut command, owner);
    let output = command.output().map_err(io("running initdb"))?;
    if !output.status.success() {
        return Err(PgError::Failed(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let staging = staging.keep();
    if fs::rename(&staging, &path).is_err() {
        // Another process won the race; its template is as good as ours.
        let _ = fs::remove_dir_all(&staging);
        if !path.join("data").join("PG_VERSION").is_file() {
            return Err(PgError::Failed(format!(
                "could not place the template at {}",
                path.display()
            )));
        }
    }
    Ok(path)
}
