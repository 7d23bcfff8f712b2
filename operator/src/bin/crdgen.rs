//! Writes the CRD YAML into `crds/` and `charts/bitscale/crds/` and the engine scrape
//! relabeling into `charts/bitscale/files/`, or prints the CRDs with `--stdout`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stdout = std::env::args().any(|a| a == "--stdout");
    for (file, crd) in bitscale_operator::crd::all() {
        let yaml = bitscale_operator::crd::to_yaml(&crd);
        if stdout {
            print!("---\n{yaml}");
            continue;
        }
        for dir in ["crds", "charts/bitscale/crds"] {
            let dir = root.join(dir);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(file), &yaml)?;
            eprintln!("wrote {}", dir.join(file).display());
        }
    }
    if !stdout {
        for (file, text) in bitscale_operator::crd::chart_files() {
            let path = root.join(file);
            std::fs::write(&path, text)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
