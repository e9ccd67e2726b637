//! Writes the CRDs generated from `ferrolb_proto::api` into the chart: `crdgen [DIR]`, by default
//! `charts/ferrolb/crds` of this workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use ferrolb_proto::api::crd;

fn main() -> ExitCode {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/ferrolb/crds")
        });
    let files = match crd::files() {
        Ok(files) => files,
        Err(err) => {
            eprintln!("crdgen: cannot render the CRDs as YAML: {err}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("crdgen: cannot create {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, text) in files {
        let path = dir.join(&name);
        if let Err(err) = std::fs::write(&path, text) {
            eprintln!("crdgen: cannot write {}: {err}", path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}
