//! Tidy checks over the source tree (STYLE.md conventions 8 and 15): every source file opens with
//! a `//!` module comment, and every dependency in Cargo.toml carries a comment saying why.

use std::path::{Path, PathBuf};

fn rust_files(directory: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(directory).unwrap_or_else(|e| panic!("{}: {e}", directory.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Every file under src/, bench/ and tests/ (fuzz targets included) opens with `//!`.
#[test]
fn every_source_file_opens_with_a_module_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for directory in ["src", "bench", "tests"] {
        rust_files(&root.join(directory), &mut files);
    }
    files.retain(|path| !path.components().any(|c| c.as_os_str() == "target"));
    assert!(files.len() > 30, "found only {} files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.starts_with("//!")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! module comment: {missing:?}"
    );
}

/// Every entry of [dependencies] is preceded by a `#` comment line saying why it is there.
#[test]
fn every_dependency_says_why() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let section = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .and_then(|rest| rest.split("\n[").next())
        .unwrap_or_else(|| panic!("no [dependencies] section"));
    let lines: Vec<&str> = section.lines().collect();
    let mut undocumented = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        // The nearest non-dependency line above must be a comment (a comment may cover a group).
        let mut above = index;
        let mut commented = false;
        while above > 0 {
            above -= 1;
            let previous = lines[above];
            if previous.starts_with('#') {
                commented = true;
                break;
            }
            if previous.trim().is_empty() {
                break;
            }
        }
        if !commented {
            undocumented.push(line.to_string());
        }
    }
    assert!(
        undocumented.is_empty(),
        "dependencies without a why-comment: {undocumented:?}"
    );
}
