use super::*;

#[test]
fn presets_parse() {
    for (name, text) in PRESETS {
        Scenario::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let text = "name = \"x\"\n[bench]\nsizes = [\"4K\"]\nbogus = 3\n";
    let e = Scenario::parse(text, "configs/x.toml")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("configs/x.toml: "), "{e}");
    assert!(e.contains("line 4"), "{e}");
    assert!(e.contains("unknown field `bogus`"), "{e}");
}

#[test]
fn bad_values_name_the_line_and_the_problem() {
    let e = Scenario::parse("name = \"x\"\n[bench]\nsizes = [\"4Q\"]\n", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3") && e.contains("unknown suffix"), "{e}");
    let e = Scenario::parse("name = \"x\"\n[probe]\nbackings = [\"zfs\"]\n", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3") && e.contains("unknown variant `zfs`"),
        "{e}"
    );
    let e = Scenario::parse("name = \"x\"\n[bench]\nthreads = 0\n", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3"), "{e}");
    let e = Scenario::parse("name = \"x\"\n[bench]\nsizes = []\n", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 3: [bench] sizes: must list at least one value"),
        "{e}"
    );
}

#[test]
fn out_of_range_values_are_refused_naming_the_key_and_the_range() {
    let max_sig = max_rt_signal_offset();
    for (text, want) in [
        (
            "name = \"x\"\n[storm]\nduration = \"20000000000000000000s\"\n",
            "line 3",
        ),
        (
            "name = \"x\"\n[bench]\nmax_time = \"169h\"\n",
            "between 0s and 168h",
        ),
        (
            "name = \"x\"\n[bench]\nthreads = 1025\n",
            "[bench] threads: must be between 1 and 1024",
        ),
        (
            "name = \"x\"\n[bench]\nwarmup = 18446744073709551615\n",
            "[bench] warmup: must be between 0 and 10000000",
        ),
        (
            "name = \"x\"\n[bench]\niterations = 1000000001\n",
            "[bench] iterations: must be between 1 and 1000000000",
        ),
        (
            "name = \"x\"\n[bench]\nsizes = [\"2T\"]\n",
            "between 1 byte and 1T",
        ),
        (
            "name = \"x\"\n[storm]\npinners = 100000\n",
            "[storm] pinners: must be between 1 and 1024",
        ),
        (
            "name = \"x\"\n[storm]\ndisruptors = 100000\n",
            "[storm] disruptors: must be between 0 and 1024",
        ),
        (
            "name = \"x\"\n[storm]\nrate = 1e-300\n",
            "[storm] rate: must be 0 (as fast as possible) or between 0.001 and 1000000000",
        ),
        ("name = \"x\"\n[storm]\nrate = nan\n", "[storm] rate"),
        (
            "name = \"x\"\n[storm]\nexamples = 18446744073709551615\n",
            "[storm] examples: must be between 0 and 10000",
        ),
        ("name = \"x\"\n[lease]\nrate = inf\n", "[lease] rate"),
        (
            "name = \"x\"\n[lease]\nrounds = 4000000000\n",
            "[lease] rounds: must be between 0 and 1000000",
        ),
        (
            "name = \"x\"\n[lease]\noverhead_cycles = 4000000000\n",
            "[lease] overhead_cycles: must be between 0",
        ),
        (
            "name = \"x\"\n[lease]\nsignal = 1000\n",
            &format!("line 3: [lease] signal: must be between 0 and {max_sig}"),
        ),
        (
            "name = \"x\"\n[lease]\nsignal = -1\n",
            "[lease] signal: must be between 0",
        ),
        (
            "name = \"x\"\n[rdma]\nport = 0\n[probe]\n",
            "[rdma] port: must be between 1 and 255",
        ),
    ] {
        let e = Scenario::parse(text, "f.toml").unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    let text = format!("name = \"x\"\n[lease]\nsignal = {max_sig}\n");
    Scenario::parse(&text, "f.toml").unwrap();
    let e = Scenario::parse(
        "name = \"x\"\n[storm]\nduration = \"20000000000000000000s\"\n",
        "f.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("duration = ") && e.contains("between 0s and 168h"),
        "{e}"
    );
}

#[test]
fn a_scenario_without_jobs_is_refused() {
    let e = Scenario::parse("name = \"x\"\n", "f.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no job"), "{e}");
}

#[test]
fn presets_resolve_by_name_and_by_configs_path() {
    assert_eq!(Scenario::resolve("default").unwrap().0.name, "default");
    assert!(Scenario::resolve("no-such-preset").is_err());
}
