//! What a nightly fleet uses, for real: the KCIDB export of real results checked by KCIDB's
//! own validator (kcidb-io), the CI examples in configs/nightly/ checked by their engines'
//! schemas (check-jsonschema's bundled GitHub Actions and GitLab CI schemas,
//! kubernetes-validate), and a sharded matrix whose shards give the results of one
//! unsharded run, nothing lost or counted twice.
//!
//! The validators live in a virtual environment that scripts/validators-setup.sh makes
//! (`$PINSTORM_VALIDATORS`, else CACHE/validators as for the lab); without it these tests
//! skip, saying why, and in CI (`CI` set) they fail.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{json, pinstorm, skip, stderr, stdout, Sandbox};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache() -> PathBuf {
    if let Some(c) = std::env::var_os("PINSTORM_CACHE") {
        return PathBuf::from(c);
    }
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("pinstorm"),
        _ => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/pinstorm"),
    }
}

/// The validators' venv, or why there is none.
fn validators() -> Result<PathBuf, String> {
    let venv = std::env::var_os("PINSTORM_VALIDATORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache().join("validators"));
    for bin in ["python", "check-jsonschema", "kubernetes-validate"] {
        if !venv.join("bin").join(bin).is_file() {
            return Err(format!(
                "no {bin} in {} (scripts/validators-setup.sh installs it)",
                venv.display()
            ));
        }
    }
    Ok(venv)
}

fn venv_or_skip(test: &str) -> Option<PathBuf> {
    match validators() {
        Ok(v) => Some(v),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

fn run(c: &mut Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
}

/// kcidb-io's own validator on a file, for schema v5.3 exactly, with date-time formats
/// checked (rfc3339-validator must be there, or jsonschema skips that format silently).
fn kcidb_validate(venv: &Path, file: &Path) -> Output {
    run(Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(
            "import json, sys, kcidb_io, rfc3339_validator\n\
             data = json.load(open(sys.argv[1]))\n\
             kcidb_io.schema.V5_3.validate_exactly(data)\n\
             print('valid', len(data.get('tests', [])))",
        )
        .arg(file))
}

/// A YAML file (every document) as JSON, through the venv's PyYAML.
fn yaml(venv: &Path, file: &Path) -> Vec<Value> {
    let o = run(Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg("import json, sys, yaml\nprint(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))")
        .arg(file));
    assert!(o.status.success(), "{}: {}", file.display(), stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A copy of the built-in expectations with one rule appended to pins.toml.
fn planted_expectations(dir: &Path, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(repo().join("configs/expectations")).unwrap() {
        let p = e.unwrap().path();
        let mut text = std::fs::read_to_string(&p).unwrap();
        if p.file_name().unwrap() == "pins.toml" {
            text.push_str(extra);
        }
        std::fs::write(dir.join(p.file_name().unwrap()), text).unwrap();
    }
}

fn tests_of(doc: &Value) -> &Vec<Value> {
    doc["tests"].as_array().expect("tests")
}

fn test_at<'a>(doc: &'a Value, path: &str) -> &'a Value {
    tests_of(doc)
        .iter()
        .find(|t| t["path"] == path)
        .unwrap_or_else(|| panic!("no test {path}"))
}

#[test]
fn the_kcidb_export_of_real_results_is_accepted_by_kcidb_io() {
    let test = "the_kcidb_export_of_real_results_is_accepted_by_kcidb_io";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let sb = Sandbox::new("kcidb");
    // Probe cells that pass, differ (a planted rule) and do not run (no DAX directory), a
    // benchmark's latencies and a storm's oracles, measured on this kernel.
    let scenario = sb.base.join("kcidb.toml");
    std::fs::write(
        &scenario,
        "name = \"kcidb\"\nseed = 2\n\
         [probe]\npins = [\"io_uring\"]\nbackings = [\"anon\", \"memfd\", \"xfs-dax\"]\nsize = \"2M\"\n\
         [bench]\npins = [\"io_uring\"]\nbackings = [\"anon\"]\nsizes = [\"4K\"]\niterations = 50\nmax_time = \"200ms\"\n\
         [storm]\npins = [\"io_uring\"]\nbackings = [\"anon\"]\nmaps = [\"shared\"]\nops = [\"truncate\"]\n\
         file_size = \"256K\"\npinners = 1\ndisruptors = 1\nhold = \"1ms\"\nrate = 100\nduration = \"1s\"\n",
    )
    .unwrap();
    let exp = sb.base.join("planted");
    planted_expectations(
        &exp,
        "\n[[expect]]\npin = \"io_uring\"\nbacking = \"memfd\"\nmap = \"shared\"\naccess = \"rw\"\noutcome = \"EFAULT\"\nwhy = \"planted to differ\"\n",
    );
    let o = run(sb
        .cmd()
        .arg("--expectations")
        .arg(&exp)
        .arg("--label")
        .arg("kcidb-test")
        .arg("run")
        .arg(&scenario));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    // The same result as a lab guest that warned would file it: its console events, and the
    // commit a --build tree was at.
    let host = sb.results()[0].clone();
    let mut r: Value = serde_json::from_slice(&std::fs::read(&host).unwrap()).unwrap();
    r["run_id"] = Value::from("lab-copy");
    r["lab"] = serde_json::json!({
        "kernel_spec": "tree:/src/linux",
        "kernel_source": ["tree:/src/linux (built by --build)", format!("git:{}", "c0ffee12".repeat(5))],
        "status": "ok",
        "reason": null,
        "accel": "tcg",
        "accel_reason": "planted",
        "vng_command": [],
        "qemu_command": null,
        "console_log": "console.log",
        "console_events": [{"kind": "warning", "line": 812, "text": "WARNING: CPU: 1 PID: 77 at mm/gup.c:123 foo+0x1/0x2"}],
        "wall_seconds": 42.5,
        "guest": [],
    });
    let lab_dir = sb.results.join("lab-copy");
    std::fs::create_dir_all(&lab_dir).unwrap();
    std::fs::write(lab_dir.join("result.json"), serde_json::to_vec(&r).unwrap()).unwrap();

    let out = sb.base.join("kcidb.json");
    let o = run(sb
        .cmd()
        .args(["export", "kcidb"])
        .arg(&sb.results)
        .arg("--out")
        .arg(&out));
    assert!(o.status.success(), "{}", stderr(&o));
    let v = kcidb_validate(&venv, &out);
    assert!(
        v.status.success(),
        "kcidb-io refuses the export:\n{}\n{}",
        stdout(&v),
        stderr(&v)
    );

    let doc: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc["version"]["major"], 5);
    let statuses: BTreeMap<String, usize> =
        tests_of(&doc).iter().fold(BTreeMap::new(), |mut m, t| {
            *m.entry(t["status"].as_str().unwrap().to_string())
                .or_default() += 1;
            m
        });
    for s in ["PASS", "FAIL", "SKIP", "DONE"] {
        assert!(statuses.contains_key(s), "{s} in {statuses:?}");
    }
    let fail = test_at(&doc, "pinstorm.probe.io_uring.memfd.shared.rw");
    assert_eq!(fail["status"], "FAIL");
    assert!(fail["comment"]
        .as_str()
        .unwrap()
        .contains("planted to differ"));
    let skip_t = test_at(&doc, "pinstorm.probe.io_uring.xfs-dax.shared.rw");
    assert_eq!(skip_t["status"], "SKIP");
    assert!(
        skip_t["comment"].as_str().unwrap().starts_with("notrun: "),
        "{skip_t}"
    );
    let lat = test_at(
        &doc,
        "pinstorm.bench.io_uring.anon.shared.rw.4K.register.p50",
    );
    assert_eq!(lat["number"]["unit"], "s");
    assert!(lat["number"]["value"].as_f64().unwrap() > 0.0);
    let lost = test_at(&doc, "pinstorm.storm.io_uring.anon.shared.lost_write");
    assert_eq!(lost["number"]["unit"], "device writes");
    let boot = test_at(&doc, "pinstorm.boot");
    assert_eq!(boot["status"], "FAIL", "the console warned");
    assert!(boot["log_excerpt"]
        .as_str()
        .unwrap()
        .contains("console.log:812: [warning] WARNING: CPU: 1 PID: 77 at mm/gup.c:123"));
    // Host and lab copy: two checkouts (the lab one at its commit), two builds.
    assert_eq!(doc["checkouts"].as_array().unwrap().len(), 2);
    assert!(doc["checkouts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["git_commit_hash"] == "c0ffee12".repeat(5)));

    // Exporting again gives the same ids: KCIDB merges instead of duplicating.
    let again = sb.base.join("kcidb-again.json");
    let o = run(sb
        .cmd()
        .args(["export", "kcidb"])
        .arg(&sb.results)
        .arg("--out")
        .arg(&again));
    assert!(o.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());

    // The validator is not a rubber stamp: a path KCIDB does not allow is refused.
    let mut broken = doc.clone();
    broken["tests"][0]["path"] = Value::from("pinstorm.probe io_uring");
    let bad = sb.base.join("broken.json");
    std::fs::write(&bad, serde_json::to_vec(&broken).unwrap()).unwrap();
    assert!(!kcidb_validate(&venv, &bad).status.success());
}

/// check-jsonschema with a schema it bundles, offline.
fn check_jsonschema(venv: &Path, schema: &str, file: &Path) -> Output {
    run(Command::new(venv.join("bin/check-jsonschema"))
        .args(["--builtin-schema", schema])
        .arg(file))
}

fn kubernetes_validate(venv: &Path, file: &Path) -> Output {
    run(Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(file))
}

#[test]
fn the_ci_examples_are_accepted_by_their_engines_schemas_and_shard_the_same_matrix() {
    let test = "the_ci_examples_are_accepted_by_their_engines_schemas_and_shard_the_same_matrix";
    let Some(venv) = venv_or_skip(test) else {
        return;
    };
    let dir = repo().join("configs/nightly");
    let gh = dir.join("github-actions.yml");
    let gl = dir.join("gitlab-ci.yml");
    let k8s = [
        dir.join("k8s-indexed-job.yaml"),
        dir.join("k8s-merge-job.yaml"),
    ];
    for (o, what) in [
        (
            check_jsonschema(&venv, "vendor.github-workflows", &gh),
            "GitHub Actions",
        ),
        (
            check_jsonschema(&venv, "vendor.gitlab-ci", &gl),
            "GitLab CI",
        ),
        (kubernetes_validate(&venv, &k8s[0]), "Kubernetes shards"),
        (kubernetes_validate(&venv, &k8s[1]), "Kubernetes merge"),
    ] {
        assert!(
            o.status.success(),
            "{what}:\n{}\n{}",
            stdout(&o),
            stderr(&o)
        );
    }

    // What the schemas cannot see: each example runs every shard of one matrix.
    let g = &yaml(&venv, &gh)[0];
    let shards = g["jobs"]["lab"]["strategy"]["matrix"]["shard"]
        .as_array()
        .unwrap();
    assert_eq!(
        shards,
        &(1..=shards.len()).map(Value::from).collect::<Vec<_>>()
    );
    let step = g["jobs"]["lab"]["steps"].to_string();
    assert!(
        step.contains(r#"--shard \"${{ matrix.shard }}/${{ strategy.job-total }}\""#),
        "{step}"
    );
    assert_eq!(g["jobs"]["merge"]["needs"], "lab");

    let l = &yaml(&venv, &gl)[0];
    let values = l["lab"]["parallel"]["matrix"][0]["SHARD"]
        .as_array()
        .unwrap();
    assert_eq!(
        l["variables"]["SHARDS"],
        values.len().to_string(),
        "SHARDS is the number of SHARD values"
    );
    assert!(l["lab"]["script"]
        .to_string()
        .contains(r#"--shard \"$SHARD/$SHARDS\""#));

    let docs = yaml(&venv, &k8s[0]);
    let job = docs.iter().find(|d| d["kind"] == "Job").unwrap();
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let env = &job["spec"]["template"]["spec"]["containers"][0]["env"];
    let shards_env = env
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SHARDS")
        .unwrap();
    assert_eq!(
        shards_env["value"],
        job["spec"]["completions"].to_string(),
        "SHARDS is the number of completions"
    );
    assert_eq!(job["spec"]["parallelism"], job["spec"]["completions"]);
    let script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap();
    assert!(
        script.contains("shard=$((JOB_COMPLETION_INDEX + 1))"),
        "{script}"
    );
    assert!(script.contains(r#"--shard "$shard/$SHARDS""#), "{script}");

    // The schemas do refuse what is wrong.
    let tmp = Sandbox::new("ci-examples");
    for (name, text, good, bad_check) in [
        (
            "gh.yml",
            std::fs::read_to_string(&gh).unwrap(),
            "runs-on:",
            "run-on:",
        ),
        (
            "gl.yml",
            std::fs::read_to_string(&gl).unwrap(),
            "parallel:\n    matrix:",
            "parallel:\n    matrixx:",
        ),
        (
            "k8s.yaml",
            std::fs::read_to_string(&k8s[0]).unwrap(),
            "completionMode:",
            "completionMod:",
        ),
    ] {
        let broken = tmp.base.join(name);
        assert!(text.contains(good), "{name}");
        std::fs::write(&broken, text.replacen(good, bad_check, 1)).unwrap();
        let o = match name {
            "gh.yml" => check_jsonschema(&venv, "vendor.github-workflows", &broken),
            "gl.yml" => check_jsonschema(&venv, "vendor.gitlab-ci", &broken),
            _ => kubernetes_validate(&venv, &broken),
        };
        assert!(!o.status.success(), "{name} with {bad_check} passed");
    }
}

/// `pinstorm export kcidb` of `paths`, as (path, status) -> count: what was measured and
/// how it was judged, without run ids and times.
fn measured(sb: &Sandbox, paths: &[&Path]) -> (BTreeMap<(String, String), usize>, usize, String) {
    let o = run(sb.cmd().args(["export", "kcidb"]).args(paths));
    assert!(o.status.success(), "{}", stderr(&o));
    let doc = json(&o);
    let mut m = BTreeMap::new();
    let mut runs = std::collections::BTreeSet::new();
    for t in tests_of(&doc) {
        let path = t["path"].as_str().unwrap();
        let status = t["status"].as_str().unwrap();
        // Latencies are measured anew by every run: their presence counts, not their value.
        *m.entry((path.to_string(), status.to_string())).or_default() += 1;
        runs.insert(t["misc"]["run_id"].as_str().unwrap().to_string());
    }
    (m, runs.len(), stderr(&o))
}

#[test]
fn n_local_shards_give_the_results_of_one_unsharded_run_nothing_lost_or_counted_twice() {
    let sb = Sandbox::new("shards");
    // Three scenarios whose verdicts do not depend on timing: the host's matrix is this
    // kernel x these scenarios.
    let mut scenarios = Vec::new();
    for (name, body) in [
        ("anon", "[probe]\npins = [\"io_uring\"]\nbackings = [\"anon\"]\nsize = \"64K\"\n"),
        ("shmem", "[probe]\npins = [\"io_uring\"]\nbackings = [\"memfd\", \"tmpfs\"]\nsize = \"64K\"\n"),
        ("pin-bench", "[bench]\npins = [\"io_uring\"]\nbackings = [\"anon\"]\nsizes = [\"4K\"]\niterations = 50\nmax_time = \"100ms\"\n"),
    ] {
        let p = sb.base.join(format!("{name}.toml"));
        std::fs::write(&p, format!("name = \"{name}\"\nseed = 1\n{body}")).unwrap();
        scenarios.push(p.to_str().unwrap().to_string());
    }
    let run_into = |results: &Path, extra: &[&str]| {
        let o = run(pinstorm()
            .arg("--results")
            .arg(results)
            .arg("--scratch-root")
            .arg(&sb.scratch)
            .arg("--quiet")
            .arg("run")
            .args(&scenarios)
            .args(extra));
        assert!(o.status.success(), "{extra:?}: {}", stderr(&o));
        o
    };
    let whole = sb.base.join("whole");
    run_into(&whole, &[]);
    let (want, want_runs, _) = measured(&sb, &[&whole]);
    assert_eq!(want_runs, 3, "one run per scenario");

    for n in [2usize, 4] {
        let merged = sb.base.join(format!("merged-{n}"));
        let mut planned = Vec::new();
        for k in 1..=n {
            let shard = format!("{k}/{n}");
            // The plan names this shard's entries; the shard runs exactly those.
            let o = run(pinstorm()
                .args(["run", "--plan", "--shard", &shard])
                .args(&scenarios));
            assert!(o.status.success(), "{}", stderr(&o));
            let plan = json(&o);
            let mine: Vec<String> = plan["entries"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["shard"] == k)
                .map(|e| e["scenario"].as_str().unwrap().to_string())
                .collect();
            planned.extend(mine.clone());
            let dir = merged.join(format!("shard-{k}"));
            let o = run_into(&dir, &["--shard", &shard]);
            if mine.is_empty() {
                assert!(
                    stderr(&o).contains("is empty: nothing to run"),
                    "{}",
                    stderr(&o)
                );
            }
            let (_, runs, _) = if dir.exists() {
                measured(&sb, &[&dir])
            } else {
                (BTreeMap::new(), 0, String::new())
            };
            assert_eq!(runs, mine.len(), "shard {shard} ran its planned entries");
        }
        planned.sort();
        let mut all = scenarios.clone();
        all.sort();
        assert_eq!(planned, all, "{n} shards plan every scenario once");

        // Merged by directory: what the unsharded run measured, each run once.
        let (got, runs, _) = measured(&sb, &[&merged]);
        assert_eq!(runs, want_runs, "{n} shards");
        assert_eq!(
            got, want,
            "{n} shards: the same tests with the same statuses"
        );
    }

    // A shard's results downloaded twice (an artifact fetched into two places), or a
    // directory named twice: still each run once.
    let merged = sb.base.join("merged-2");
    let copy = merged.join("shard-1-again");
    let o = Command::new("cp")
        .arg("-a")
        .arg(merged.join("shard-1"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(o.success());
    let (got, runs, err) = measured(&sb, &[&merged, &merged.join("shard-2")]);
    assert_eq!((got, runs), (want.clone(), want_runs));
    assert!(
        err.contains("was already loaded from another file"),
        "{err}"
    );

    // compare and report read the merged directory as they read the unsharded one.
    let o = run(sb
        .cmd()
        .args(["--format", "json", "compare"])
        .arg(&whole)
        .arg(&merged));
    assert!(o.status.success(), "{}", stderr(&o));
    let cmp = json(&o);
    assert_eq!(cmp["base"]["runs"].as_array().unwrap().len(), 3);
    assert_eq!(cmp["cand"]["runs"].as_array().unwrap().len(), 3);
    assert_eq!(
        cmp["outcomes"].as_array().unwrap().len(),
        0,
        "no cell changed"
    );
    assert!(cmp["cells_compared"].as_u64().unwrap() > 0);
}

#[test]
fn the_lab_plan_puts_every_kernel_and_scenario_in_exactly_one_shard() {
    let kernels = "deb:6.1,deb:6.12,deb:sid,tree:.";
    let scenarios = ["quick", "dax-vs-pin"];
    let plan = |shard: &str| {
        let o = run(pinstorm()
            .current_dir(std::env::temp_dir())
            .args(["lab", "--plan", "--kernels", kernels, "--shard", shard])
            .args(scenarios));
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)
    };
    let whole = plan("1/1");
    let entries = whole["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 8);
    let tmp = std::env::temp_dir().canonicalize().unwrap();
    assert_eq!(
        whole["kernels"][3],
        format!("tree:{}", tmp.display()),
        "tree:. is where pinstorm runs"
    );
    let pairs = |v: &Value, k: Option<u64>| -> Vec<(String, String)> {
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| k.is_none_or(|k| e["shard"] == k))
            .map(|e| {
                (
                    e["kernel"].as_str().unwrap().to_string(),
                    e["scenario"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for n in 1..=9u64 {
        let mut seen = Vec::new();
        for k in 1..=n {
            let p = plan(&format!("{k}/{n}"));
            assert_eq!(p["shard"], serde_json::json!({"index": k, "total": n}));
            seen.extend(pairs(&p, Some(k)));
        }
        seen.sort();
        let mut all = pairs(&whole, None);
        all.sort();
        assert_eq!(seen, all, "{n} shards");
    }
    // A shard that does not exist, or a kernel named twice: bad input (2).
    let o = run(pinstorm().args(["lab", "--plan", "--shard", "4/3"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("counts from 1"), "{}", stderr(&o));
    let o = run(pinstorm().args(["lab", "--plan", "--kernels", "deb:6.1,deb:6.1"]));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("named twice"), "{}", stderr(&o));
}
