//! Project tasks, in Rust so they run wherever cargo does:
//!
//! - `cargo xtask client`: builds the browser client into `client-yew/dist/`: the wasm
//!   (profile `wasm-release`), its bindings (`wasm-bindgen --target web`, the version
//!   `Cargo.lock` pins), the wasm shrunk by binaryen's `wasm-opt -Oz` (the pinned version of
//!   the npm package `binaryen`, run by Node.js; skipped without npm), content-hashed file
//!   names (cached forever by browsers; `index.html` is not), and gzip and brotli copies the
//!   server sends to browsers that accept them. Prints the sizes. wasm-bindgen and binaryen
//!   are installed under `$HOME/.cache/relay-chat-tools` when missing.
//! - `cargo xtask run [ARGS]`: builds the client if `client-yew/dist` has none, then runs
//!   `cargo run --release -p relay-server ARGS`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("client") => build_client().map(|_| ()),
        Some("run") => run(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask client | cargo xtask run [-- server args]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate's parent).
fn root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the process too: prefer it to the path baked in
    // at compile time, which names another checkout when a shared target directory holds
    // an xtask binary built from there.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir.parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Where cargo puts build output.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Where the built client goes, and where the server looks for it by default.
fn dist_dir() -> PathBuf {
    root().join("client-yew").join("dist")
}

/// A cargo command without the variables cargo set for this process as the binary it runs
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, …). An inner cargo reads its own environment when it
/// checks whether a build script must rerun, and `ring`'s script watches some of these: with
/// them inherited, every switch between `cargo xtask` and a plain `cargo build` reran it and
/// rebuilt the whole release tree. `CARGO`, `CARGO_HOME`, `CARGO_TARGET_DIR` and the user's
/// own `CARGO_*` settings stay.
fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_for_a_running_binary) {
            command.env_remove(name);
        }
    }
    command
}

/// Whether cargo sets this variable for the binary it runs (`cargo run`), as opposed to
/// the ones it passes on or reads as configuration.
fn set_for_a_running_binary(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

fn status(command: &mut Command) -> Result<()> {
    // The program and its arguments: `{command:?}` would also list every variable removed.
    let shown = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let status = command.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn run(args: &[String]) -> Result<()> {
    if !dist_dir().join("index.html").exists() {
        eprintln!("xtask: the browser client is not built yet; building it first");
        build_client()?;
    }
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    status(cargo().current_dir(root()).args(["run", "--release", "-p", "relay-server", "--"]).args(args))
}

/// The version of a package `Cargo.lock` pins.
fn locked_version(package: &str) -> Result<String> {
    let lock = fs::read_to_string(root().join("Cargo.lock")).context("cannot read Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{package}\"") {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return Ok(version.trim_end_matches('"').to_string());
            }
        }
    }
    bail!("{package} is not in Cargo.lock")
}

/// The npm package of binaryen whose `wasm-opt` shrinks the wasm: binaryen itself compiled
/// to wasm, run by Node.js. Older binaryens cannot read what Rust and wasm-bindgen emit now
/// (`table.fill`): neither Debian 12's (108) nor the newest the `wasm-opt` crate builds (116).
const BINARYEN_VERSION: &str = "132.0.0";

/// How `wasm-opt` shrinks the wasm: `-Oz` (`-Os` and `-O3` end within 0.3% of it
/// compressed, and larger raw), without names or producers (nothing a browser uses). The
/// wasm features come from the module's `target_features` section.
const WASM_OPT_FLAGS: &[&str] = &["-Oz", "--strip-debug", "--strip-producers"];

/// The tools the client build runs.
struct Tools {
    wasm_bindgen: PathBuf,
    /// None where npm is missing to install it.
    wasm_opt: Option<PathBuf>,
}

/// Where the build's tools are installed when missing: outside the clone, so every checkout
/// and CI run reuse them.
fn tools_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".cache/relay-chat-tools")
}

/// Whether `program --version` runs and says `version`.
fn reports(program: &Path, version: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains(version))
}

/// Installs what the build needs when it is missing: the wasm target, the wasm-bindgen CLI
/// of the locked version and binaryen's `wasm-opt` of the pinned one.
fn toolchain() -> Result<Tools> {
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(out) = targets
        && !String::from_utf8_lossy(&out.stdout).lines().any(|t| t == "wasm32-unknown-unknown")
    {
        status(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    Ok(Tools { wasm_bindgen: wasm_bindgen()?, wasm_opt: wasm_opt()? })
}

/// The wasm-bindgen CLI of the version `Cargo.lock` pins (bindings and wasm must match).
fn wasm_bindgen() -> Result<PathBuf> {
    let version = locked_version("wasm-bindgen")?;
    let cached = tools_dir().join("bin/wasm-bindgen");
    if let Some(found) = [cached.clone(), PathBuf::from("wasm-bindgen")].into_iter().find(|c| reports(c, &version)) {
        return Ok(found);
    }
    eprintln!("xtask: installing wasm-bindgen-cli {version} (once; a few minutes)");
    status(cargo().args(["install", "wasm-bindgen-cli", "--version", &version, "--root"]).arg(tools_dir()))?;
    Ok(cached)
}

/// binaryen's `wasm-opt` of `BINARYEN_VERSION`, from the npm registry (seconds to install;
/// the `wasm-opt` crate compiles an older binaryen's C++ for a quarter of an hour). None
/// without npm: the build does not depend on it (`deploy/Dockerfile` brings Node.js into its
/// Rust image for it).
fn wasm_opt() -> Result<Option<PathBuf>> {
    let prefix = tools_dir().join("binaryen");
    let cached = prefix.join("node_modules/.bin/wasm-opt");
    let major = BINARYEN_VERSION.split('.').next().unwrap_or(BINARYEN_VERSION);
    if reports(&cached, &format!("version {major} ")) {
        return Ok(Some(cached));
    }
    if Command::new("npm").arg("--version").output().is_err() {
        eprintln!("xtask: no npm (Node.js) to install binaryen's wasm-opt; the wasm is served as built");
        return Ok(None);
    }
    eprintln!("xtask: installing binaryen {BINARYEN_VERSION} (npm; once)");
    status(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"])
            .arg(&prefix)
            .arg(format!("binaryen@{BINARYEN_VERSION}")),
    )
    .context("cannot install binaryen's wasm-opt")?;
    Ok(Some(cached))
}

/// Shrinks the wasm in place with `wasm-opt`.
fn optimize(wasm_opt: &Path, wasm: &Path, scratch: &Path) -> Result<()> {
    status(Command::new(wasm_opt).args(WASM_OPT_FLAGS).arg(wasm).arg("-o").arg(scratch))?;
    fs::rename(scratch, wasm).context("cannot replace the wasm with the optimised one")
}

/// A short content hash for cache-busting file names.
fn hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn brotli(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let params = brotli::enc::BrotliEncoderParams { quality: 11, lgwin: 22, ..Default::default() };
    brotli::BrotliCompress(&mut &bytes[..], &mut out, &params)?;
    Ok(out)
}

/// Sizes of one built file: raw, gzip, brotli.
struct Built {
    name: String,
    raw: usize,
    gz: usize,
    br: usize,
}

/// Writes a file of `dist` with its compressed copies.
fn emit(dist: &Path, name: &str, bytes: &[u8]) -> Result<Built> {
    fs::write(dist.join(name), bytes)?;
    let (gz, br) = (gzip(bytes)?, brotli(bytes)?);
    fs::write(dist.join(format!("{name}.gz")), &gz)?;
    fs::write(dist.join(format!("{name}.br")), &br)?;
    Ok(Built { name: name.to_string(), raw: bytes.len(), gz: gz.len(), br: br.len() })
}

fn build_client() -> Result<Vec<(String, usize, usize, usize)>> {
    let tools = toolchain()?;
    let client = root().join("client-yew");
    status(cargo().current_dir(root()).args([
        "build",
        "--locked",
        "--profile",
        "wasm-release",
        "--target",
        "wasm32-unknown-unknown",
        "-p",
        "relay-client-yew",
        "--bin",
        "relay-client-yew",
    ]))?;
    let wasm = target_dir().join("wasm32-unknown-unknown/wasm-release/relay-client-yew.wasm");
    let staging = target_dir().join("client-bindgen");
    let _ = fs::remove_dir_all(&staging);
    status(
        Command::new(&tools.wasm_bindgen)
            .args(["--target", "web", "--no-typescript", "--out-name", "app", "--out-dir"])
            .arg(&staging)
            .arg(&wasm),
    )?;
    let bindgen_wasm = staging.join("app_bg.wasm");
    if let Some(wasm_opt) = &tools.wasm_opt {
        optimize(wasm_opt, &bindgen_wasm, &staging.join("app_opt.wasm"))?;
    }

    let dist = dist_dir();
    let _ = fs::remove_dir_all(&dist);
    fs::create_dir_all(&dist)?;
    let wasm_bytes = fs::read(&bindgen_wasm)?;
    let wasm_name = format!("app-{}.wasm", hash(&wasm_bytes));
    // The bindings module starts the app itself, from the hashed wasm (no inline script,
    // so the page's Content-Security-Policy can forbid them).
    let mut js_bytes = fs::read(staging.join("app.js"))?;
    js_bytes.extend_from_slice(format!("\n__wbg_init({{ module_or_path: '/{wasm_name}' }});\n").as_bytes());
    let css_bytes = fs::read(client.join("style.css"))?;
    let js_name = format!("app-{}.js", hash(&js_bytes));
    let css_name = format!("style-{}.css", hash(&css_bytes));
    let index = fs::read_to_string(client.join("index.html"))?
        .replace("{{css}}", &format!("/{css_name}"))
        .replace("{{js}}", &format!("/{js_name}"))
        .replace("{{wasm}}", &format!("/{wasm_name}"));
    let built = [
        emit(&dist, &wasm_name, &wasm_bytes)?,
        emit(&dist, &js_name, &js_bytes)?,
        emit(&dist, &css_name, &css_bytes)?,
        emit(&dist, "index.html", index.as_bytes())?,
    ];
    let (raw, gz, br) = built.iter().fold((0, 0, 0), |(r, g, b), f| (r + f.raw, g + f.gz, b + f.br));
    println!("{:<28} {:>10} {:>10} {:>10}", "client-yew/dist", "raw", "gzip", "brotli");
    for file in &built {
        println!("{:<28} {:>10} {:>10} {:>10}", file.name, file.raw, file.gz, file.br);
    }
    println!("{:<28} {:>10} {:>10} {:>10}", "total", raw, gz, br);
    Ok(built.into_iter().map(|f| (f.name, f.raw, f.gz, f.br)).collect())
}

#[cfg(test)]
mod tests {
    use super::set_for_a_running_binary;

    #[test]
    fn the_inner_cargo_keeps_its_configuration_but_not_this_binarys_variables() {
        for gone in ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_PKG_NAME", "CARGO_PKG_VERSION_PRE"] {
            assert!(set_for_a_running_binary(gone), "{gone}");
        }
        for kept in ["CARGO", "CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS", "CARGO_PROFILE_RELEASE_LTO"] {
            assert!(!set_for_a_running_binary(kept), "{kept}");
        }
    }
}
