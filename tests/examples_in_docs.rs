//! Every public method of the crate has a runnable example in its
//! documentation (a code block, which `cargo test --doc` compiles and,
//! unless `no_run`, runs). Checked on the sources: a `pub fn` whose doc
//! comment has no code block fails this test. Test hooks (`#[doc(hidden)]`
//! impl blocks) are not part of the API.

use std::fs;
use std::path::Path;

fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn every_public_method_has_an_example() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut missing = Vec::new();
    let mut methods = 0;
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut hidden = false;
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("#[doc(hidden)]") {
                hidden = true;
            }
            // A top-level item ends a hidden impl block.
            if line.starts_with('}') {
                hidden = false;
            }
            let is_method = ["pub fn ", "pub async fn ", "pub unsafe fn "]
                .iter()
                .any(|p| trimmed.starts_with(p));
            if !is_method || hidden {
                continue;
            }
            methods += 1;
            let doc: Vec<&str> = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim_start())
                .take_while(|l| l.starts_with("///") || l.starts_with("#["))
                .collect();
            if !doc.iter().any(|l| l.contains("```")) {
                let name = trimmed.split('(').next().unwrap_or(trimmed);
                missing.push(format!("{}:{}: {name}", file.display(), i + 1));
            }
        }
    }
    assert!(
        methods > 50,
        "found only {methods} public methods: is the scan broken?"
    );
    assert!(
        missing.is_empty(),
        "public methods without an example:\n{}",
        missing.join("\n")
    );
}
