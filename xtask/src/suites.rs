//! `cargo xtask test`, the README's test command: provides what the suites need, runs every
//! suite and ends with a table of their outcomes.
//!
//! It provides the Python packages of `tests/requirements.txt` in a venv of its own under the
//! target folder (made once, reused while the file is unchanged) and, where it runs as root with
//! `apt-get`, the system packages: Mesa's software Vulkan driver (the wgpu tests and the
//! downstream crate need a Vulkan driver), libjpeg-turbo's development files (the
//! `libjpeg-turbo` feature) and Python's venv module. What it cannot provide it names, with
//! the command that provides it; the suites that need it are reported as not run and the task
//! exits non-zero: a missing dependency is never a silent pass.
//!
//! A unit test that needs a GPU adapter says so in its name (`…on_the_gpu…`), so that the CPU
//! suite can leave it to the wgpu suite.

use std::env;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The word in the name of every unit test that needs a GPU adapter.
pub const GPU_TEST_MARKER: &str = "on_the_gpu";

/// Something a suite needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// A Vulkan driver (wgpu's adapter); without a GPU, Mesa's lavapipe.
    Vulkan,
    /// libjpeg-turbo's development files, found by pkg-config.
    LibJpeg,
    /// The Python packages of `tests/requirements.txt`.
    Python,
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Need::Vulkan => "a Vulkan driver",
            Need::LibJpeg => "libjpeg-turbo's development files",
            Need::Python => "the Python packages of tests/requirements.txt",
        })
    }
}

/// A need the task could not meet: what is missing and how to get it.
struct Missing {
    need: Need,
    why: String,
}

/// One suite: what it checks, what it needs, and the cargo commands that run it; a suite
/// without commands runs inside the one before it and shares its outcome.
struct Suite {
    name: &'static str,
    what: String,
    needs: Vec<Need>,
    commands: Vec<Vec<String>>,
    env: Vec<(String, OsString)>,
}

#[derive(Clone)]
enum Outcome {
    Passed(Duration),
    Failed(String),
    NotRun(String),
}

pub fn run() -> Result<(), String> {
    let root = crate::workspace_root()?;
    env::set_current_dir(&root).map_err(|e| format!("cannot enter {}: {e}", root.display()))?;
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);

    let mut apt = Apt::new();
    let mut missing = Vec::new();
    let python_bin = match python_environment(&target, &mut apt) {
        Ok(bin) => Some(bin),
        Err(why) => {
            missing.push(Missing {
                need: Need::Python,
                why,
            });
            None
        }
    };
    if let Err(why) = vulkan_driver(&mut apt) {
        missing.push(Missing {
            need: Need::Vulkan,
            why,
        });
    }
    if let Err(why) = libjpeg(&mut apt) {
        missing.push(Missing {
            need: Need::LibJpeg,
            why,
        });
    }
    for gap in &missing {
        eprintln!("xtask test: missing {}: {}", gap.need, gap.why);
    }

    // The suites' environment: the venv's `python3` first on the path (the tests run
    // `python3`), wgpu on Vulkan unless the caller chose, the Python checks skipped by name
    // where the packages are missing (and reported as not run below).
    let mut suite_env: Vec<(String, OsString)> = Vec::new();
    if let Some(bin) = &python_bin {
        let mut paths = vec![bin.clone()];
        paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
        let path = env::join_paths(paths).map_err(|e| format!("cannot set PATH: {e}"))?;
        suite_env.push(("PATH".into(), path));
    } else {
        for skip in ["PEDCONV_SKIP_ONNXRUNTIME", "PEDCONV_SKIP_TENSORBOARD"] {
            suite_env.push((skip.into(), "1".into()));
        }
    }
    if env::var_os("WGPU_BACKEND").is_none() {
        suite_env.push(("WGPU_BACKEND".into(), "vulkan".into()));
    }

    let targets = test_targets()?;
    let mut outcomes: Vec<(Suite, Outcome)> = Vec::new();
    for suite in suites(&targets, &target, suite_env) {
        let unmet: Vec<&Missing> = missing
            .iter()
            .filter(|gap| suite.needs.contains(&gap.need))
            .collect();
        let outcome = if let Some(first) = unmet.first() {
            eprintln!(
                "\nxtask test: {}: not run, {} is missing",
                suite.name, first.need
            );
            Outcome::NotRun(format!("{} is missing", first.need))
        } else if let (true, Some((_, before))) = (suite.commands.is_empty(), outcomes.last()) {
            before.clone()
        } else {
            eprintln!("\nxtask test: {}: {}", suite.name, suite.what);
            run_suite(&suite)
        };
        outcomes.push((suite, outcome));
    }

    let (table, all_passed) = summary(&outcomes, &missing);
    eprintln!("\n{table}");
    if all_passed {
        Ok(())
    } else {
        let not_passed: Vec<&str> = outcomes
            .iter()
            .filter(|(_, outcome)| !matches!(outcome, Outcome::Passed(_)))
            .map(|(suite, _)| suite.name)
            .collect();
        Err(format!("not passed: {}", not_passed.join(", ")))
    }
}

/// The suites, in the order they run. The first builds every target (examples and the wgpu
/// suite included) so that a compile error ends the task before any test runs.
fn suites(targets: &TestTargets, target_dir: &Path, env: Vec<(String, OsString)>) -> Vec<Suite> {
    let words = |words: &[&str]| words.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    // Every test binary runs even where one fails, so that the task reports every failure.
    let mut cpu = words(&["test", "--workspace", "--no-fail-fast", "--lib", "--bins"]);
    for name in &targets.cpu {
        cpu.extend(["--test".to_string(), name.clone()]);
    }
    cpu.extend(words(&["--", "--skip", GPU_TEST_MARKER]));
    let mut wgpu = vec![words(&[
        "test",
        "--workspace",
        "--no-fail-fast",
        "--lib",
        "--bins",
        "--",
        GPU_TEST_MARKER,
    ])];
    for name in &targets.wgpu {
        wgpu.push(words(&[
            "test",
            "--workspace",
            "--no-fail-fast",
            "--test",
            name,
        ]));
    }
    let target_dir = target_dir.to_string_lossy().into_owned();
    let suite = |name, what: &str, needs: &[Need], commands| Suite {
        name,
        what: what.to_string(),
        needs: needs.to_vec(),
        commands,
        env: env.clone(),
    };
    vec![
        suite(
            "build",
            "every crate's tests, examples and suites, built",
            &[],
            vec![words(&["test", "--workspace", "--no-run"])],
        ),
        suite(
            "cpu",
            &format!(
                "every test on the CPU (flex): unit tests, {}, doc tests",
                targets.cpu.join(", ")
            ),
            &[],
            vec![
                cpu,
                words(&["test", "--workspace", "--no-fail-fast", "--doc"]),
            ],
        ),
        suite(
            "python-checks",
            "the ONNX export in onnxruntime and the event files in TensorBoard's reader (in the \
             cpu suite's `export` and `cli` tests)",
            &[Need::Python],
            vec![],
        ),
        suite(
            "wgpu",
            &format!(
                "the unit tests that need a GPU adapter and {} on wgpu",
                targets.wgpu.join(", ")
            ),
            &[Need::Vulkan],
            wgpu,
        ),
        suite(
            "libjpeg-turbo",
            "the transform tests with JPEGs decoded by the system's libjpeg-turbo",
            &[Need::LibJpeg],
            vec![words(&[
                "test",
                "--package",
                "pedconv-train",
                "--features",
                "libjpeg-turbo",
                "--bin",
                "pedconv",
                "data::transform",
            ])],
        ),
        suite(
            "downstream",
            "a user's crate with burn's default features (tests/downstream), trained on wgpu",
            &[Need::Vulkan],
            vec![vec![
                "run".into(),
                "--manifest-path".into(),
                "tests/downstream/Cargo.toml".into(),
                "--target-dir".into(),
                target_dir,
            ]],
        ),
    ]
}

fn run_suite(suite: &Suite) -> Outcome {
    let start = Instant::now();
    for args in &suite.commands {
        eprintln!("$ cargo {}", args.join(" "));
        let status = Command::new(env!("CARGO"))
            .args(args)
            .envs(suite.env.iter().map(|(k, v)| (k, v)))
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => return Outcome::Failed(format!("`cargo {}`: {status}", args.join(" "))),
            Err(e) => return Outcome::Failed(format!("cannot run cargo: {e}")),
        }
    }
    Outcome::Passed(start.elapsed())
}

/// The table of outcomes, then how to get what was missing; and whether every suite passed.
fn summary(outcomes: &[(Suite, Outcome)], missing: &[Missing]) -> (String, bool) {
    let mut table = String::from("xtask test: the suites\n");
    let mut all_passed = true;
    for (suite, outcome) in outcomes {
        let text = match outcome {
            Outcome::Passed(took) => format!("passed   ({} s)", took.as_secs()),
            Outcome::Failed(why) => format!("FAILED   {why}"),
            Outcome::NotRun(why) => format!("NOT RUN  {why}"),
        };
        all_passed &= matches!(outcome, Outcome::Passed(_));
        table += &format!("  {:<14} {text}\n", suite.name);
    }
    for gap in missing {
        table += &format!("missing {}: {}\n", gap.need, gap.why);
    }
    (table, all_passed)
}

/// The workspace's integration-test targets, split by what they run on: the CUDA ones are left
/// to the GPU check.
struct TestTargets {
    cpu: Vec<String>,
    wgpu: Vec<String>,
}

/// Reads the test targets off `cargo metadata`: a target whose required features include
/// `wgpu` runs on wgpu, `cuda` on CUDA, any other on the CPU.
fn test_targets() -> Result<TestTargets, String> {
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo metadata failed ({})", output.status));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("cargo metadata printed no JSON: {e}"))?;
    let mut targets = TestTargets {
        cpu: Vec::new(),
        wgpu: Vec::new(),
    };
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    for target in packages
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
    {
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if !is_test {
            continue;
        }
        let name = target["name"].as_str().unwrap_or_default().to_string();
        let features = target["required-features"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if features.iter().any(|f| f == "cuda") {
            continue;
        } else if features.iter().any(|f| f == "wgpu") {
            targets.wgpu.push(name);
        } else {
            targets.cpu.push(name);
        }
    }
    Ok(targets)
}

/// Debian's package manager, where this process may use it (as root).
struct Apt {
    usable: bool,
    updated: bool,
}

impl Apt {
    fn new() -> Self {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
        let apt_get = Command::new("apt-get")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        Self {
            usable: root && apt_get,
            updated: false,
        }
    }

    /// Installs `packages`; `Err` says why not (not root, no apt-get, or apt-get's failure).
    fn install(&mut self, packages: &[&str]) -> Result<(), String> {
        if !self.usable {
            return Err(
                "this user cannot install system packages (not root, or no apt-get)".into(),
            );
        }
        eprintln!("xtask test: apt-get install {}", packages.join(" "));
        if !self.updated {
            apt_get(&["update", "-qq"])?;
            self.updated = true;
        }
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(packages);
        apt_get(&args)
    }
}

fn apt_get(args: &[&str]) -> Result<(), String> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`apt-get {}` failed ({status})", args.join(" ")))
    }
}

/// A Vulkan driver: installed with Mesa's where it is missing and apt-get can.
fn vulkan_driver(apt: &mut Apt) -> Result<(), String> {
    let found = || vulkan_loader().and_then(|()| vulkan_manifests(&env_lookup).map(drop));
    let Err(why) = found() else {
        return Ok(());
    };
    let install = ["mesa-vulkan-drivers", "libvulkan1"];
    match apt.install(&install) {
        Ok(()) => found().map_err(|after| format!("{after} (after installing Mesa's driver)")),
        Err(apt_error) => Err(format!(
            "{why}; {apt_error}. As root: `apt-get install {}` (Mesa's software driver, \
             lavapipe), or a GPU's Vulkan driver",
            install.join(" ")
        )),
    }
}

/// Vulkan's loader library, in the folders the dynamic linker searches.
fn vulkan_loader() -> Result<(), String> {
    let arch = env::consts::ARCH;
    let mut dirs: Vec<PathBuf> =
        env::split_paths(&env::var_os("LD_LIBRARY_PATH").unwrap_or_default()).collect();
    for dir in [
        format!("/usr/lib/{arch}-linux-gnu"),
        format!("/lib/{arch}-linux-gnu"),
        "/usr/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
        "/usr/local/lib".into(),
    ] {
        dirs.push(dir.into());
    }
    if dirs.iter().any(|dir| dir.join("libvulkan.so.1").exists()) {
        Ok(())
    } else {
        Err("no Vulkan loader (libvulkan.so.1)".into())
    }
}

/// The Vulkan driver manifests (ICD files) the loader would read: the files named by
/// `VK_DRIVER_FILES` or `VK_ICD_FILENAMES` where either is set (they replace the search), else
/// the JSON files of the loader's folders. `Err` when there is none.
fn vulkan_manifests(var: &dyn Fn(&str) -> Option<OsString>) -> Result<Vec<PathBuf>, String> {
    for name in ["VK_DRIVER_FILES", "VK_ICD_FILENAMES"] {
        if let Some(files) = var(name) {
            let named: Vec<PathBuf> = env::split_paths(&files).collect();
            let present: Vec<PathBuf> = named.iter().filter(|f| f.is_file()).cloned().collect();
            return if present.is_empty() {
                Err(format!(
                    "no Vulkan driver: {name}={} names no file that exists",
                    files.to_string_lossy()
                ))
            } else {
                Ok(present)
            };
        }
    }
    let list = |name: &str, default: &str| -> Vec<PathBuf> {
        let value = var(name).unwrap_or_else(|| default.into());
        env::split_paths(&value).collect()
    };
    let mut dirs = list("XDG_CONFIG_DIRS", "/etc/xdg");
    dirs.push("/etc".into());
    if let Some(home) = var("XDG_DATA_HOME")
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".local/share").into()))
    {
        dirs.push(home.into());
    }
    dirs.extend(list("XDG_DATA_DIRS", "/usr/local/share:/usr/share"));
    let manifests: Vec<PathBuf> = dirs
        .iter()
        .map(|dir| dir.join("vulkan/icd.d"))
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    if manifests.is_empty() {
        Err("no Vulkan driver: no manifest in the loader's folders (…/vulkan/icd.d)".into())
    } else {
        Ok(manifests)
    }
}

fn env_lookup(name: &str) -> Option<OsString> {
    env::var_os(name)
}

/// libjpeg's development files (pkg-config's `libjpeg`): installed where missing and apt-get can.
fn libjpeg(apt: &mut Apt) -> Result<(), String> {
    let found = || {
        Command::new("pkg-config")
            .args(["--exists", "libjpeg"])
            .status()
            .is_ok_and(|status| status.success())
    };
    if found() {
        return Ok(());
    }
    let install = ["pkg-config", "libjpeg-dev"];
    match apt.install(&install) {
        Ok(()) if found() => Ok(()),
        Ok(()) => Err("pkg-config finds no libjpeg after installing libjpeg-dev".into()),
        Err(apt_error) => Err(format!(
            "pkg-config finds no libjpeg; {apt_error}. As root: `apt-get install {}`",
            install.join(" ")
        )),
    }
}

/// Where the venv lives, under the target folder.
const VENV: &str = "test-python";
const REQUIREMENTS: &str = "tests/requirements.txt";
/// The requirements the venv was last filled from, kept inside it.
const STAMP: &str = "pedconv-requirements.txt";

/// The venv of the tests' Python packages, made or brought up to date: its `bin` folder.
fn python_environment(target: &Path, apt: &mut Apt) -> Result<PathBuf, String> {
    let venv = target.join(VENV);
    let bin = venv.join("bin");
    let requirements =
        fs::read_to_string(REQUIREMENTS).map_err(|e| format!("cannot read {REQUIREMENTS}: {e}"))?;
    let stamp = venv.join(STAMP);
    if fs::read_to_string(&stamp).is_ok_and(|s| s == requirements) && bin.join("python3").exists() {
        eprintln!("xtask test: Python packages: {} (reused)", venv.display());
        return Ok(bin);
    }
    eprintln!(
        "xtask test: Python packages: making {} from {REQUIREMENTS}",
        venv.display()
    );
    let make = || {
        run_quietly(
            Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )
    };
    if let Err(why) = make() {
        // Debian keeps venv's pip apart from Python itself.
        apt.install(&["python3-venv"])
            .and_then(|()| make())
            .map_err(|_| {
                format!(
                    "`python3 -m venv` failed ({why}); install Python 3 with its venv module \
                     (Debian, as root: `apt-get install python3-venv`)"
                )
            })?;
    }
    let pip = run_quietly(
        Command::new(bin.join("python3"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(REQUIREMENTS),
    );
    if let Err(why) = pip {
        return Err(format!(
            "pip could not install {REQUIREMENTS} into {} ({why}); where PyPI can be reached: \
             `{}/python3 -m pip install -r {REQUIREMENTS}`",
            venv.display(),
            bin.display()
        ));
    }
    fs::write(&stamp, requirements)
        .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(bin)
}

/// Runs `command` with its output captured; `Err` holds the last line of its errors.
fn run_quietly(command: &mut Command) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("cannot run it: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!("{}: {last}", output.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(vars: Vec<(&'static str, OsString)>) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// `VK_ICD_FILENAMES` replaces the loader's search: pointing at nothing, no driver; at a
    /// manifest, that one.
    #[test]
    fn the_driver_files_variable_replaces_the_search() {
        let dir = env::temp_dir().join(format!("xtask-vulkan-{}", std::process::id()));
        fs::create_dir_all(dir.join("vulkan/icd.d")).unwrap();
        let manifest = dir.join("vulkan/icd.d/lvp_icd.x86_64.json");
        fs::write(&manifest, "{}").unwrap();
        let nowhere = dir.join("none.json");

        let named = vulkan_manifests(&lookup(vec![("VK_ICD_FILENAMES", manifest.clone().into())]));
        assert_eq!(named.unwrap(), vec![manifest.clone()]);
        let error = vulkan_manifests(&lookup(vec![
            ("VK_ICD_FILENAMES", nowhere.clone().into()),
            ("XDG_DATA_DIRS", dir.clone().into()),
        ]))
        .unwrap_err();
        assert!(error.contains("VK_ICD_FILENAMES"), "{error}");
        // Without the variables, the folders are searched.
        let searched = vulkan_manifests(&lookup(vec![
            ("XDG_DATA_DIRS", dir.clone().into()),
            ("XDG_CONFIG_DIRS", nowhere.clone().into()),
            ("HOME", nowhere.clone().into()),
        ]));
        assert!(searched.unwrap().contains(&manifest));
        let empty = env::temp_dir().join(format!("xtask-vulkan-empty-{}", std::process::id()));
        let none = vulkan_manifests(&lookup(vec![
            ("XDG_DATA_DIRS", empty.clone().into()),
            ("XDG_CONFIG_DIRS", empty.clone().into()),
            ("HOME", empty.into()),
        ]));
        // The machine's /etc/vulkan/icd.d is always searched.
        if !Path::new("/etc/vulkan/icd.d").exists() {
            assert!(none.is_err());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A suite that did not run is named in the table and fails the task, as a failed one does.
    #[test]
    fn a_suite_not_run_fails_the_task() {
        let targets = TestTargets {
            cpu: vec!["suite".into()],
            wgpu: vec!["suite-wgpu".into()],
        };
        let mut outcomes: Vec<(Suite, Outcome)> = suites(&targets, Path::new("target"), vec![])
            .into_iter()
            .map(|suite| (suite, Outcome::Passed(Duration::from_secs(1))))
            .collect();
        assert!(summary(&outcomes, &[]).1);
        let wgpu = outcomes.iter().position(|(s, _)| s.name == "wgpu").unwrap();
        outcomes[wgpu].1 = Outcome::NotRun("a Vulkan driver is missing".into());
        let missing = [Missing {
            need: Need::Vulkan,
            why: "no Vulkan driver".into(),
        }];
        let (table, all_passed) = summary(&outcomes, &missing);
        assert!(!all_passed);
        assert!(
            table.contains("wgpu           NOT RUN  a Vulkan driver is missing"),
            "{table}"
        );
        assert!(
            table.contains("missing a Vulkan driver: no Vulkan driver"),
            "{table}"
        );
    }

    /// The CPU suite leaves the GPU unit tests and the wgpu targets to the wgpu suite.
    #[test]
    fn the_gpu_tests_run_in_the_wgpu_suite_only() {
        let targets = TestTargets {
            cpu: vec!["suite".into(), "cli".into()],
            wgpu: vec!["suite-wgpu".into()],
        };
        let all = suites(&targets, Path::new("target"), vec![]);
        let commands = |name: &str| {
            all.iter()
                .find(|s| s.name == name)
                .unwrap()
                .commands
                .iter()
                .map(|c| c.join(" "))
                .collect::<Vec<_>>()
        };
        let cpu = commands("cpu");
        assert!(
            cpu[0].ends_with(&format!("--skip {GPU_TEST_MARKER}")),
            "{cpu:?}"
        );
        assert!(!cpu[0].contains("suite-wgpu"), "{cpu:?}");
        let wgpu = commands("wgpu");
        assert!(
            wgpu[0].ends_with(&format!("-- {GPU_TEST_MARKER}")),
            "{wgpu:?}"
        );
        assert_eq!(wgpu[1], "test --workspace --no-fail-fast --test suite-wgpu");
    }
}
