//! Fuzzing on stable Rust, as part of the test command: every parser of user input
//! (fuzz/targets.rs) gets its seeds (the shipped configs, generated histograms, and the
//! corpus under fuzz/corpus/<target>/) and then a deterministic, seeded stream of mutations
//! of them: bit flips, boundary numbers and strings in place of the values in the text,
//! foreign and corrupted histograms in place of stored ones, insertions, deletions and
//! splices. An input that panics fails the test; it is minimized first and written out,
//! to be added to the corpus as a regression seed.
//!
//! `PINSTORM_FUZZ_ITERS` sets the number of mutated inputs per target (default: a few
//! seconds' worth), `PINSTORM_FUZZ_SEED` the seed of the mutations; docs/fuzzing.md.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use targets::Target;

/// Mutated inputs per target when `PINSTORM_FUZZ_ITERS` is not set: a few seconds each in
/// a debug build. Decoding a histogram scans tens of thousands of buckets, and the result
/// target runs every analysis command on each input, so those get fewer.
const DEFAULT_ITERS: u64 = 2000;
const DEFAULT_HISTOGRAM_ITERS: u64 = 800;
const DEFAULT_RESULT_ITERS: u64 = 120;
/// Inputs grow by insertion and splicing; past this they are cut.
const MAX_INPUT: usize = 1 << 20;

fn iterations(default: u64) -> u64 {
    match std::env::var("PINSTORM_FUZZ_ITERS") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PINSTORM_FUZZ_ITERS={v:?} is not a count")),
        Err(_) => default,
    }
}

fn base_seed() -> u64 {
    match std::env::var("PINSTORM_FUZZ_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("PINSTORM_FUZZ_SEED={v:?} is not a number")),
        Err(_) => 0x5eed_f022,
    }
}

fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The built-in seeds of a target, then its corpus files in name order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = targets::seeds(target)
        .into_iter()
        .enumerate()
        .map(|(i, s)| (format!("built-in seed {i}"), s))
        .collect();
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        v.push((f.display().to_string(), bytes));
    }
    assert!(
        !v.is_empty(),
        "no seeds for {target} (add files to {})",
        dir.display()
    );
    v
}

thread_local! {
    /// Set while a target runs under `crashes`: its panics are expected and recorded, not
    /// printed (a minimization makes hundreds).
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Targets under `crashes` right now, in any test.
static QUIET_SECTIONS: AtomicUsize = AtomicUsize::new(0);
/// The last panic of a worker thread (rayon's, in compare and plot), which reaches the
/// target's thread as a panic without the message.
static WORKER_PANIC: Mutex<Option<String>> = Mutex::new(None);

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            // Test threads are named after their test; unnamed ones are workers.
            let worker = std::thread::current().name().is_none();
            if QUIET.with(Cell::get) {
                LAST_PANIC.with(|l| *l.borrow_mut() = Some(info.to_string()));
            } else if worker && QUIET_SECTIONS.load(Ordering::SeqCst) > 0 {
                *WORKER_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(info.to_string());
            } else {
                default(info);
            }
        }));
    });
}

/// Whether `f` accepted `input`, or its panic message.
fn crashes(f: Target, input: &[u8]) -> Result<bool, String> {
    QUIET.with(|q| q.set(true));
    QUIET_SECTIONS.fetch_add(1, Ordering::SeqCst);
    let r = panic::catch_unwind(AssertUnwindSafe(|| f(input)));
    QUIET_SECTIONS.fetch_sub(1, Ordering::SeqCst);
    QUIET.with(|q| q.set(false));
    r.map_err(|_| {
        LAST_PANIC
            .with(|l| l.borrow_mut().take())
            .or_else(|| {
                WORKER_PANIC
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
            })
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// A smaller input that still panics: chunks removed while it does, halving the chunk.
fn minimize(f: Target, input: &[u8]) -> Vec<u8> {
    let mut cur = input.to_vec();
    let mut budget = 4000;
    let mut chunk = cur.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < cur.len() && budget > 0 {
            budget -= 1;
            let end = (i + chunk).min(cur.len());
            let mut cand = cur[..i].to_vec();
            cand.extend_from_slice(&cur[end..]);
            if crashes(f, &cand).is_err() {
                cur = cand;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 || budget == 0 {
            return cur;
        }
        chunk /= 2;
    }
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "1e300",
    "-1e300",
    "1e-300",
    "255",
    "256",
    "1024",
    "1025",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "NaN",
    "nan",
    "inf",
    "-inf",
];

const STRINGS: &[&str] = &[
    "",
    "0",
    "0s",
    "168h",
    "169h",
    "20000000000000000000s",
    "1e300s",
    "-1s",
    "NaN",
    "1T",
    "2T",
    "18446744073709551616",
    "4K",
    "ok",
    "notrun",
    "differs",
    "as-expected",
    "EFAULT",
    "*",
    "é",
    "日本語",
    "\u{202e}",
    "a\u{0}b",
    "\t",
    "latest",
    "6.12",
    ">=6.5, <7.0",
    "p99>+10%",
    "cycle",
    "register",
    "xfs",
    "tmpfs",
    "io_uring",
    "shared",
    "rw",
    "AAAA",
    "!!!!",
];

/// Bytes that matter to the formats parsed here.
const BYTES: &[u8] = b"\0\x7f\x80\xc3\xff\"'[]{}=,.:-+%\n\t\\ #e";

/// Stored histograms to put where a result file has one: other producers' bounds,
/// corruptions, and encodings that HdrHistogram's deserializer would trip over.
fn histogram_pool() -> Vec<String> {
    let mut v: Vec<String> = targets::foreign_histograms()
        .iter()
        .map(|h| targets::b64(&targets::compressed_v2(h)))
        .collect();
    let ours = targets::b64(&targets::compressed_v2(&targets::foreign_histograms()[0]));
    v.push(ours[..ours.len() / 2].to_string());
    v.push(ours.replacen('A', "B", 3));
    v.push(String::new());
    v.push(evil_v2(&[0xff; 9]));
    v.push(evil_v2(&[
        0x02, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ]));
    let mut huge_len = hex_v2_header(u32::MAX);
    huge_len.extend_from_slice(&[2, 4, 6]);
    v.push(targets::b64(&targets::compressed_v2(&huge_len)));
    v
}

/// A V2 header of pinstorm's bounds claiming `payload_len` bytes of counts.
fn hex_v2_header(payload_len: u32) -> Vec<u8> {
    let mut h = 0x1c84_9313u32.to_be_bytes().to_vec();
    h.extend_from_slice(&payload_len.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes());
    h.extend_from_slice(&3u32.to_be_bytes());
    h.extend_from_slice(&1u64.to_be_bytes());
    h.extend_from_slice(&3_600_000_000_000u64.to_be_bytes());
    h.extend_from_slice(&1f64.to_bits().to_be_bytes());
    h
}

fn evil_v2(payload: &[u8]) -> String {
    let mut h = hex_v2_header(payload.len() as u32);
    h.extend_from_slice(payload);
    targets::b64(&targets::compressed_v2(&h))
}

/// Where the literals are: (start, end) of number-like runs and of quoted strings' content.
fn numbers_in(d: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < d.len() {
        if d[i].is_ascii_digit() {
            let start = if i > 0 && d[i - 1] == b'-' { i - 1 } else { i };
            while i < d.len() && (d[i].is_ascii_digit() || b".eE+-".contains(&d[i])) {
                i += 1;
            }
            v.push((start, i));
        } else {
            i += 1;
        }
    }
    v
}

fn strings_in(d: &[u8]) -> Vec<(usize, usize)> {
    let quotes: Vec<usize> = d
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'"')
        .map(|(i, _)| i)
        .collect();
    quotes
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0] + 1, c[1]))
        .collect()
}

fn splice(d: &mut Vec<u8>, (a, b): (usize, usize), with: &[u8]) {
    d.splice(a..b, with.iter().copied());
}

/// Every node of a JSON document, as a path of object keys and array indexes.
fn json_paths(
    v: &serde_json::Value,
    at: &mut Vec<serde_json::Value>,
    out: &mut Vec<Vec<serde_json::Value>>,
) {
    out.push(at.clone());
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m {
                at.push(serde_json::Value::String(k.clone()));
                json_paths(c, at, out);
                at.pop();
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(serde_json::Value::from(i));
                json_paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn json_at<'a>(
    v: &'a mut serde_json::Value,
    path: &[serde_json::Value],
) -> Option<&'a mut serde_json::Value> {
    let mut cur = v;
    for p in path {
        cur = match p {
            serde_json::Value::String(k) => cur.get_mut(k.as_str())?,
            _ => cur.get_mut(p.as_u64()? as usize)?,
        };
    }
    Some(cur)
}

/// A mutation that keeps a JSON document JSON (so that it gets past the syntax to the
/// fields): a value replaced by a boundary value of its kind, an array element doubled or
/// dropped, a key dropped.
fn mutate_json(d: &mut Vec<u8>, pool: &[String], rng: &mut ChaCha8Rng) -> bool {
    use serde_json::Value;
    let Ok(mut doc) = serde_json::from_slice::<Value>(d) else {
        return false;
    };
    let mut paths = Vec::new();
    json_paths(&doc, &mut Vec::new(), &mut paths);
    let path = paths[rng.random_range(0..paths.len())].clone();
    let Some(node) = json_at(&mut doc, &path) else {
        return false;
    };
    if rng.random_bool(0.15) {
        // Every number below the node at once: what no single edit reaches (all counts of a
        // storm at their maximum, summed; every second of a timeline at the end of time).
        fn all(v: &mut Value, n: &Value) {
            match v {
                Value::Number(_) => *v = n.clone(),
                Value::Array(a) => a.iter_mut().for_each(|c| all(c, n)),
                Value::Object(m) => m.values_mut().for_each(|c| all(c, n)),
                _ => {}
            }
        }
        let n = [
            Value::from(u64::MAX),
            Value::from(0),
            Value::from(1e300),
            Value::from(u32::MAX),
            Value::from(i32::MAX),
        ];
        all(node, &n[rng.random_range(0..n.len())]);
        *d = serde_json::to_vec_pretty(&doc).expect("JSON serializes");
        return true;
    }
    match node {
        Value::Number(_) => {
            let n = [
                Value::from(0),
                Value::from(-1),
                Value::from(1),
                Value::from(u64::MAX),
                Value::from(i64::MIN),
                Value::from(u32::MAX),
                Value::from(1e300),
                Value::from(-1e300),
                Value::from(0.5),
                Value::from(1e-300),
            ];
            *node = n[rng.random_range(0..n.len())].clone();
        }
        Value::String(st) if st.len() >= 40 && rng.random_bool(0.7) => {
            *node = Value::String(pool[rng.random_range(0..pool.len())].clone());
        }
        Value::String(_) => {
            *node = Value::String(STRINGS[rng.random_range(0..STRINGS.len())].into());
        }
        Value::Bool(b) => *b = !*b,
        Value::Null => *node = Value::String(STRINGS[rng.random_range(0..STRINGS.len())].into()),
        Value::Array(a) if !a.is_empty() => {
            let i = rng.random_range(0..a.len());
            if rng.random_bool(0.5) {
                let c = a[i].clone();
                a.insert(i, c);
            } else {
                a.remove(i);
            }
        }
        Value::Array(_) => {}
        Value::Object(m) if !m.is_empty() => {
            let k = m.keys().nth(rng.random_range(0..m.len())).cloned();
            if let Some(k) = k {
                m.remove(&k);
            }
        }
        Value::Object(_) => {}
    }
    *d = serde_json::to_vec_pretty(&doc).expect("JSON serializes");
    true
}

fn mutate(d: &mut Vec<u8>, seeds: &[(String, Vec<u8>)], pool: &[String], rng: &mut ChaCha8Rng) {
    let pos = |rng: &mut ChaCha8Rng, d: &Vec<u8>| rng.random_range(0..=d.len());
    // JSON inputs (results, lab plans) are mostly mutated as JSON.
    if d.first() == Some(&b'{') && rng.random_bool(0.7) && mutate_json(d, pool, rng) {
        return;
    }
    match rng.random_range(0..12) {
        0 if !d.is_empty() => {
            let i = rng.random_range(0..d.len());
            d[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !d.is_empty() => {
            let i = rng.random_range(0..d.len());
            d[i] = BYTES[rng.random_range(0..BYTES.len())];
        }
        2 => {
            let i = pos(rng, d);
            let t = if rng.random_bool(0.5) {
                NUMBERS[rng.random_range(0..NUMBERS.len())]
            } else {
                STRINGS[rng.random_range(0..STRINGS.len())]
            };
            splice(d, (i, i), t.as_bytes());
        }
        3 if !d.is_empty() => {
            let a = rng.random_range(0..d.len());
            let b = (a + rng.random_range(1..=32)).min(d.len());
            d.drain(a..b);
        }
        4 if !d.is_empty() => {
            let a = rng.random_range(0..d.len());
            let b = (a + rng.random_range(1..=64)).min(d.len());
            let piece = d[a..b].to_vec();
            let i = pos(rng, d);
            splice(d, (i, i), &piece);
        }
        5 => {
            let other = &seeds[rng.random_range(0..seeds.len())].1;
            let a = pos(rng, d);
            let b = rng.random_range(0..=other.len());
            d.truncate(a);
            d.extend_from_slice(&other[b..]);
        }
        6 | 7 => {
            let spots = numbers_in(d);
            if !spots.is_empty() {
                let s = spots[rng.random_range(0..spots.len())];
                splice(d, s, NUMBERS[rng.random_range(0..NUMBERS.len())].as_bytes());
            }
        }
        8 => {
            let spots = strings_in(d);
            if !spots.is_empty() {
                let s = spots[rng.random_range(0..spots.len())];
                splice(d, s, STRINGS[rng.random_range(0..STRINGS.len())].as_bytes());
            }
        }
        9 => {
            let spots: Vec<_> = strings_in(d)
                .into_iter()
                .filter(|(a, b)| b - a >= 40)
                .collect();
            if !spots.is_empty() {
                let s = spots[rng.random_range(0..spots.len())];
                splice(d, s, pool[rng.random_range(0..pool.len())].as_bytes());
            }
        }
        10 => {
            let i = pos(rng, d);
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            splice(d, (i, i), &bytes);
        }
        _ => {
            let i = pos(rng, d);
            d.truncate(i);
        }
    }
    d.truncate(MAX_INPUT);
}

/// Whether `f` accepted `input`; a panic fails the test with the minimized input.
fn check(name: &str, f: Target, what: &str, input: &[u8]) -> bool {
    let first = match crashes(f, input) {
        Ok(accepted) => return accepted,
        Err(why) => why,
    };
    let small = minimize(f, input);
    let why = crashes(f, &small).err().unwrap_or(first);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}-{:016x}", fnv(&small)));
    std::fs::write(&file, &small).unwrap();
    let shown: String = String::from_utf8_lossy(&small).chars().take(2000).collect();
    panic!(
        "fuzz target {name} panicked on {what}, minimized to {} bytes in {}\n\
         (add it to fuzz/corpus/{name}/ with a test of what it must do instead)\n\
         panic: {why}\ninput: {shown:?}",
        small.len(),
        file.display()
    );
}

/// Every seed as it is, then `iters` mutations of them.
fn fuzz(name: &str, default_iters: u64) {
    install_panic_hook();
    let f = targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1;
    let seeds = corpus(name);
    for (what, s) in &seeds {
        check(name, f, what, s);
    }
    let mut accepted = 0u64;
    let pool = histogram_pool();
    let seed = base_seed() ^ fnv(name.as_bytes());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let iters = iterations(default_iters);
    for i in 0..iters {
        let (from, s) = &seeds[rng.random_range(0..seeds.len())];
        let mut input = s.clone();
        for _ in 0..rng.random_range(1..=4) {
            mutate(&mut input, &seeds, &pool, &mut rng);
        }
        accepted += u64::from(check(
            name,
            f,
            &format!(
                "mutation {i} of {from} (PINSTORM_FUZZ_SEED={})",
                base_seed()
            ),
            &input,
        ));
    }
    // Seen with --nocapture: how much of the mutated input got past the parsers.
    println!(
        "fuzz {name}: {} seeds, {iters} mutations, {accepted} accepted",
        seeds.len()
    );
}

#[test]
fn fuzz_scenario_files() {
    fuzz("scenario", DEFAULT_ITERS);
}

#[test]
fn fuzz_expectation_files() {
    fuzz("expectations", DEFAULT_ITERS);
}

#[test]
fn fuzz_scratch_journal_lines() {
    fuzz("journal", DEFAULT_ITERS);
}

#[test]
fn fuzz_result_files_through_compare_plot_report_and_export() {
    fuzz("result", DEFAULT_RESULT_ITERS);
}

#[test]
fn fuzz_stored_histograms() {
    fuzz("histogram", DEFAULT_HISTOGRAM_ITERS);
}

#[test]
fn fuzz_selectors() {
    fuzz("selector", DEFAULT_ITERS);
}

#[test]
fn fuzz_gates() {
    fuzz("gate", DEFAULT_ITERS);
}

#[test]
fn fuzz_bisect_checks() {
    fuzz("check", DEFAULT_ITERS);
}

#[test]
fn fuzz_gate_files() {
    fuzz("gates-toml", DEFAULT_ITERS);
}

#[test]
fn fuzz_sizes_and_durations() {
    fuzz("units", DEFAULT_ITERS);
}

#[test]
fn fuzz_kernel_releases_ranges_and_specs() {
    fuzz("kernel", DEFAULT_ITERS);
}

#[test]
fn fuzz_lab_plans_and_guest_reports() {
    fuzz("lab", DEFAULT_ITERS);
}

#[test]
fn every_target_has_a_test_and_a_corpus_directory() {
    for (name, _) in targets::TARGETS {
        assert!(corpus_dir(name).is_dir(), "fuzz/corpus/{name} is missing");
    }
    let me = include_str!("fuzz.rs");
    for (name, _) in targets::TARGETS {
        assert!(
            me.contains(&format!("fuzz(\"{name}\"")),
            "no test runs the fuzz target {name}"
        );
    }
}

/// The targets are worth running only if real input gets past their parsers: the shipped
/// configs and real results are accepted, and the corpus's edited inputs refused.
#[test]
fn real_inputs_are_accepted_by_their_targets_and_edited_ones_refused() {
    install_panic_hook();
    for (name, f) in targets::TARGETS {
        for (i, s) in targets::seeds(name).iter().enumerate() {
            assert_eq!(crashes(*f, s), Ok(true), "{name}: built-in seed {i}");
        }
    }
    for (name, file, accepted) in [
        ("result", "real-run.json", true),
        ("result", "bench-only.json", true),
        ("result", "other-producer-histograms.json", true),
        ("result", "edited-histogram.json", false),
        ("result", "counts-at-u64-max.json", true),
        ("histogram", "other-producer-past-one-hour.bin", true),
        ("histogram", "edited-zero-run-of-i64-min.bin", false),
        ("histogram", "edited-2-to-the-60-samples.bin", false),
        ("histogram", "edited-4-gib-payload-length.bin", false),
        ("scenario", "every-job.toml", true),
        (
            "scenario",
            "crash-block-threshold-past-duration-max.toml",
            false,
        ),
        ("units", "crash-span-past-duration-max.txt", false),
        ("units", "span-max.txt", true),
        ("units", "size-max.txt", true),
    ] {
        let f = targets::TARGETS.iter().find(|t| t.0 == name).unwrap().1;
        let data = std::fs::read(corpus_dir(name).join(file)).unwrap();
        assert_eq!(crashes(f, &data), Ok(accepted), "{name}: {file}");
    }
}

#[test]
fn a_panicking_target_is_caught_minimized_and_reported() {
    install_panic_hook();
    fn boom(d: &[u8]) -> bool {
        if d.windows(3).any(|w| w == b"BAD") {
            panic!("found it");
        }
        true
    }
    assert_eq!(crashes(boom, b"all good"), Ok(true));
    assert!(crashes(boom, b"xxxxBADyyyy")
        .unwrap_err()
        .contains("found it"));
    assert_eq!(minimize(boom, b"some text around BAD and after it"), b"BAD");
    fn boom_in_a_worker(d: &[u8]) -> bool {
        let d = d.to_vec();
        let worker = std::thread::spawn(move || boom(&d));
        match worker.join() {
            Ok(accepted) => accepted,
            Err(e) => panic::resume_unwind(e),
        }
    }
    assert!(crashes(boom_in_a_worker, b"xxBADxx")
        .unwrap_err()
        .contains("found it"));
}
