//! Whether lab tests can run here, and the policy when they cannot: skip, or fail under CI.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;

/// Set to `1` (CI does) to turn a skipped lab test into a failure.
pub const REQUIRE_LAB_ENV: &str = "FERROLB_REQUIRE_LAB";

/// Tools every lab needs: `ip` builds it, `tcpdump` captures in it.
pub const LAB_TOOLS: &[&str] = &["ip", "tcpdump"];

const NEED_ROOT: &str =
    "lab tests need root (network namespaces, veth, raw sockets); run as root or via scripts/test";

/// Proof that the lab's preconditions held when the test started.
#[derive(Debug, Clone, Copy)]
pub struct LabAccess(());

/// What a lab test does, given where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Everything is there: run.
    Run,
    /// Not runnable here, and nobody required it: skip, saying why.
    Skip(String),
    /// Not runnable here, but [`REQUIRE_LAB_ENV`] demands it: fail, saying why.
    Fail(String),
}

/// The policy, as a pure function: root and tools present run; otherwise skip, or fail when
/// required. `missing` lists the tools not found.
pub fn verdict(is_root: bool, missing: &[&str], required: bool) -> Verdict {
    let reason = if !is_root {
        NEED_ROOT.to_owned()
    } else if !missing.is_empty() {
        let list: Vec<String> = missing
            .iter()
            .map(|tool| format!("`{tool}` (Debian package {})", debian_package(tool)))
            .collect();
        format!(
            "lab tests need {} on PATH; install it or run via scripts/test",
            list.join(", ")
        )
    } else {
        return Verdict::Run;
    };
    if required {
        Verdict::Fail(format!(
            "{reason} [{REQUIRE_LAB_ENV}=1 makes this a failure]"
        ))
    } else {
        Verdict::Skip(reason)
    }
}

/// Whether the environment value of [`REQUIRE_LAB_ENV`] asks for lab tests to be required.
pub fn required_by(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !matches!(v.to_str().map(str::trim), Some("" | "0" | "false" | "no")))
}

/// The tools in `tools` that are not executable files in any directory of `path` (a PATH value).
pub fn missing_tools<'a>(tools: &[&'a str], path: Option<&OsStr>) -> Vec<&'a str> {
    let dirs: Vec<std::path::PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    tools
        .iter()
        .copied()
        .filter(|tool| !dirs.iter().any(|dir| is_executable(&dir.join(tool))))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The Debian package that provides a lab tool, for messages.
pub fn debian_package(tool: &str) -> &str {
    match tool {
        "ip" => "iproute2",
        "ping" => "iputils-ping",
        "tcpdump" => "tcpdump",
        "arping" => "arping",
        "ndisc6" => "ndisc6",
        "curl" => "curl",
        "nginx" => "nginx",
        "keepalived" => "keepalived",
        "etcd" => "etcd-server",
        "kubectl" => "kubernetes-client",
        "setpriv" => "util-linux",
        "dockerd" => "docker.io",
        "nsenter" => "util-linux",
        other => other,
    }
}

/// The guard every lab test calls first, for the lab's own tools plus `extra_tools`.
///
/// Returns `Some` when the test can run. Otherwise prints `skipping: <why>` and returns `None`,
/// or, when `FERROLB_REQUIRE_LAB=1`, panics with the reason.
pub fn require_lab(extra_tools: &[&str]) -> Option<LabAccess> {
    let tools: Vec<&str> = LAB_TOOLS.iter().chain(extra_tools).copied().collect();
    let path = std::env::var_os("PATH");
    let missing = missing_tools(&tools, path.as_deref());
    let required = required_by(std::env::var_os(REQUIRE_LAB_ENV).as_deref());
    match verdict(nix::unistd::geteuid().is_root(), &missing, required) {
        Verdict::Run => Some(LabAccess(())),
        Verdict::Skip(reason) => {
            // Straight to the stderr handle: the test harness captures `eprintln!` of passing
            // tests, and a skip that nobody sees looks like a pass.
            let _ = writeln!(std::io::stderr(), "skipping: {reason}");
            None
        }
        Verdict::Fail(reason) => panic!("{reason}"),
    }
}

/// For a precondition beyond root and tools (an input a script builds, like the image
/// archive): prints `skipping: <why>` and returns `None`, or panics with the reason when
/// `FERROLB_REQUIRE_LAB=1`.
pub fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if required_by(std::env::var_os(REQUIRE_LAB_ENV).as_deref()) {
        panic!("{reason} [{REQUIRE_LAB_ENV}=1 makes this a failure]");
    }
    let _ = writeln!(std::io::stderr(), "skipping: {reason}");
    None
}

/// Runs the rest of the test only if the lab can run here: `lab_or_skip!()` or
/// `lab_or_skip!("ping", "arping")` for tests that need more tools. See [`require_lab`].
#[macro_export]
macro_rules! lab_or_skip {
    ($($tool:expr),* $(,)?) => {
        match $crate::privilege::require_lab(&[$($tool),*]) {
            Some(access) => access,
            None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_with_tools_runs() {
        assert_eq!(verdict(true, &[], false), Verdict::Run);
        assert_eq!(verdict(true, &[], true), Verdict::Run);
    }

    #[test]
    fn non_root_skips_saying_why() {
        let Verdict::Skip(reason) = verdict(false, &[], false) else {
            panic!("expected a skip");
        };
        assert!(reason.contains("need root"), "{reason}");
    }

    #[test]
    fn non_root_fails_when_required() {
        let Verdict::Fail(reason) = verdict(false, &[], true) else {
            panic!("expected a failure");
        };
        assert!(
            reason.contains("need root") && reason.contains(REQUIRE_LAB_ENV),
            "{reason}"
        );
    }

    #[test]
    fn missing_tool_is_named_with_its_package() {
        let Verdict::Skip(reason) = verdict(true, &["tcpdump", "ping"], false) else {
            panic!("expected a skip");
        };
        assert!(
            reason.contains("`tcpdump`") && reason.contains("iputils-ping"),
            "{reason}"
        );
    }

    #[test]
    fn require_env_values() {
        assert!(!required_by(None));
        assert!(!required_by(Some(OsStr::new(""))));
        assert!(!required_by(Some(OsStr::new("0"))));
        assert!(required_by(Some(OsStr::new("1"))));
        assert!(required_by(Some(OsStr::new("true"))));
    }

    #[test]
    fn finds_tools_on_path() {
        assert!(missing_tools(&["sh"], Some(OsStr::new("/bin:/usr/bin"))).is_empty());
        assert_eq!(
            missing_tools(
                &["sh", "no-such-tool-ferrolb"],
                Some(OsStr::new("/bin:/usr/bin"))
            ),
            ["no-such-tool-ferrolb"]
        );
        assert_eq!(missing_tools(&["sh"], None), ["sh"]);
    }
}
