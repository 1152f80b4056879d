//! `wtq run`: a user runs tasks of a built component from the command line.

use std::time::Duration;

use crate::support::{Wtq, guest};

#[test]
fn add_prints_the_sum() {
    let run = Wtq::new().run([guest("math").as_os_str(), "add".as_ref(), "[2,3]".as_ref()]);
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "5\n"),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn keyword_arguments_mix_with_positional_ones() {
    let wtq = Wtq::new();
    let math = guest("math");
    let math = math.to_str().expect("utf-8 path");
    assert_eq!(
        wtq.run([math, "add", "[2]", "--kwargs", r#"{"y":40}"#])
            .stdout,
        "42\n"
    );
    assert_eq!(wtq.run([math, "add", r#"{"x":1,"y":2}"#]).stdout, "3\n");
    assert_eq!(wtq.run([math, "xsum", "[[1,2,3,4]]"]).stdout, "10\n");
}

#[test]
fn list_shows_the_math_tasks_with_docs() {
    let run = Wtq::new().run([guest("math").as_os_str(), "--list".as_ref()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", run.stdout);
    for task in ["add(x, y)", "mul(x, y)", "xsum(", "fib(n)"] {
        let line = lines
            .iter()
            .find(|line| line.starts_with(task))
            .unwrap_or_else(|| panic!("{task} listed"));
        let doc = line[task.len()..]
            .split_once(' ')
            .map(|(_, doc)| doc.trim());
        assert!(
            doc.is_some_and(|doc| doc.len() > 5),
            "{task} has a doc: {line}"
        );
    }
}

#[test]
fn text_tasks_do_real_work() {
    let wtq = Wtq::new();
    let text = guest("text");
    let text = text.to_str().expect("utf-8 path");
    let run = wtq.run([text, "slugify", r#"["Hello, World! Crème brûlée"]"#]);
    assert_eq!(
        run.stdout.trim(),
        r#""hello-world-crème-brûlée""#,
        "{}",
        run.stderr
    );
    let run = wtq.run([text, "sha256", r#"["abc"]"#]);
    assert_eq!(
        run.stdout.trim(),
        r#""ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad""#
    );
    let run = wtq.run([text, "word_count", r#"["one two\nthree"]"#]);
    let counts: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(counts["words"], 3);
    assert_eq!(counts["lines"], 2);
    let run = wtq.run([text, "markdown", r##"["# Title\n\nSome *text* & <b>"]"##]);
    let html: String = serde_json::from_str(&run.stdout).expect("JSON string");
    assert!(
        html.contains("<h1>Title</h1>")
            && html.contains("<em>text</em>")
            && html.contains("&amp; &lt;b&gt;"),
        "{html}"
    );
}

fn chaos(wtq: &Wtq, args: &[&str]) -> crate::support::Run {
    let chaos = guest("chaos");
    let mut all = vec![chaos.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    wtq.run(all)
}

#[test]
fn a_spinning_task_stops_at_its_time_limit() {
    let run = chaos(&Wtq::new(), &["spin", "--time-limit", "1s"]);
    run.fails_with(10, "time_limit_exceeded");
    assert!(
        run.elapsed < Duration::from_secs(2),
        "stopped in {:?}",
        run.elapsed
    );
}

#[test]
fn a_spinning_task_runs_out_of_fuel() {
    chaos(&Wtq::new(), &["spin", "--fuel", "1000000"]).fails_with(11, "out_of_fuel");
}

#[test]
fn a_greedy_task_hits_its_memory_limit() {
    let run = chaos(&Wtq::new(), &["alloc", "[64]", "--memory", "32MiB"]);
    run.fails_with(12, "memory_limit_exceeded");
    assert!(
        run.stderr.contains("32MiB"),
        "names the limit: {}",
        run.stderr
    );
    let run = chaos(&Wtq::new(), &["alloc", "[16]", "--memory", "32MiB"]);
    assert_eq!(run.code, 0, "16 MiB fits in 32 MiB: {}", run.stderr);
}

#[test]
fn unbounded_recursion_is_a_stack_overflow() {
    chaos(&Wtq::new(), &["recurse"]).fails_with(13, "stack_overflow");
}

#[test]
fn an_oversized_output_is_refused() {
    let run = chaos(&Wtq::new(), &["big_output", "[2]"]);
    run.fails_with(14, "output_too_large");
    assert!(
        run.stderr.contains("1MiB"),
        "names the limit: {}",
        run.stderr
    );
}

#[test]
fn time_blocked_in_a_host_call_counts() {
    let run = chaos(&Wtq::new(), &["sleep", "[5000]", "--time-limit", "1s"]);
    run.fails_with(10, "time_limit_exceeded");
    assert!(
        run.elapsed < Duration::from_secs(2),
        "stopped in {:?}",
        run.elapsed
    );
    let run = chaos(&Wtq::new(), &["sleep", "[50]"]);
    assert_eq!((run.code, run.stdout.trim()), (0, "50"), "{}", run.stderr);
}

#[test]
fn a_log_flood_is_truncated_not_fatal() {
    let run = chaos(
        &Wtq::new(),
        &["log_flood", "[100000]", "--json", "--max-log", "4KiB"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["state"], "SUCCESS");
    let log = report["log"].as_str().expect("log text");
    assert!(log.len() < 4096 + 200, "log capped: {} bytes", log.len());
    assert!(log.contains("log truncated"), "says it was truncated");
    assert!(
        log.contains("INFO "),
        "host log lines are captured: {}",
        &log[..200.min(log.len())]
    );
}

#[test]
fn stdout_and_stderr_land_in_the_task_log() {
    let run = chaos(&Wtq::new(), &["log_flood", "[3]", "--json"]);
    let report = run.json();
    let log = report["log"].as_str().expect("log text");
    assert_eq!(log.lines().count(), 3, "{log}");
}

#[test]
fn guest_failures_have_their_own_exit_codes() {
    let wtq = Wtq::new();
    chaos(&wtq, &["trap"]).fails_with(4, "trap");
    chaos(&wtq, &["fail", r#"["disk on fire"]"#]).fails_with(1, "disk on fire");
    chaos(&wtq, &["retry", "[250]"]).fails_with(3, "retried in 250");
}

#[test]
fn json_report_carries_duration_fuel_and_memory() {
    let run = chaos(&Wtq::new(), &["echo", r#"[{"a":[1,2]}]"#, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["state"], "SUCCESS");
    assert_eq!(report["output"], serde_json::json!({"a": [1, 2]}));
    assert!(report["duration_ms"].as_f64().is_some_and(|ms| ms > 0.0));
    assert!(report["fuel"].as_u64().is_some_and(|fuel| fuel > 0));
    assert!(
        report["peak_memory"]
            .as_u64()
            .is_some_and(|bytes| bytes >= 65536)
    );
    let unmetered = chaos(&Wtq::new(), &["echo", "[1]", "--json", "--fuel", "off"]).json();
    assert_eq!(
        unmetered["fuel"],
        serde_json::Value::Null,
        "no fuel figure without metering"
    );
}

#[test]
fn the_task_sees_its_context_and_reports_progress() {
    let report = chaos(&Wtq::new(), &["progress", "[4]", "--json"]).json();
    assert_eq!(
        report["progress"],
        serde_json::json!({"done": 4, "total": 4, "note": report["progress"]["note"]})
    );
    let report = chaos(&Wtq::new(), &["context", "--json"]).json();
    let context = &report["output"];
    assert_eq!(context["task_id"], report["task_id"]);
    assert_eq!(context["task_name"], "context");
    assert_eq!(context["attempt"], 1);
}

#[test]
fn a_second_run_loads_the_cached_artifact_and_a_corrupt_one_is_recompiled() {
    let wtq = Wtq::new();
    let math = guest("math");
    let math = math.to_str().expect("utf-8 path");
    let compile = |run: crate::support::Run| {
        assert_eq!(run.code, 0, "{}", run.stderr);
        run.json()["compile"]
            .as_str()
            .expect("compile source")
            .to_string()
    };
    assert_eq!(
        compile(wtq.run([math, "add", "[1,1]", "--json"])),
        "compiled"
    );
    assert_eq!(compile(wtq.run([math, "add", "[1,1]", "--json"])), "cached");

    let artifacts: Vec<_> = std::fs::read_dir(wtq.cache_dir())
        .expect("cache dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let mut bytes = std::fs::read(&artifacts[0]).expect("artifact");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&artifacts[0], bytes).expect("corrupt the artifact");

    let run = wtq.run([math, "add", "[1,1]", "--json"]);
    assert_eq!(run.json()["output"], 2);
    assert_eq!(compile(run), "recompiled");
    assert_eq!(compile(wtq.run([math, "add", "[1,1]", "--json"])), "cached");
}

mod bad_input {
    use super::*;

    fn write(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write fixture");
        path.to_str().expect("utf-8 path").to_string()
    }

    #[test]
    fn a_file_that_is_not_wasm() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = write(&dir, "notes.wasm", b"just some text\n");
        Wtq::new()
            .run([path.as_str(), "add"])
            .fails_with(6, "not a WebAssembly file");
    }

    #[test]
    fn a_core_module_instead_of_a_component() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let module = wat::parse_str("(module (func (export \"add\")))").expect("valid module");
        let path = write(&dir, "core.wasm", &module);
        Wtq::new()
            .run([path.as_str(), "add"])
            .fails_with(6, "core WebAssembly module, not a component");
    }

    #[test]
    fn a_component_without_the_tasks_export() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let component = wat::parse_str("(component)").expect("valid component");
        let path = write(&dir, "empty.wasm", &component);
        Wtq::new()
            .run([path.as_str(), "--list"])
            .fails_with(6, "does not export wtq:task/tasks@0.1.0");
    }

    #[test]
    fn a_component_importing_what_the_host_does_not_grant() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let component =
            wat::parse_str(r#"(component (import "wasi:http/outgoing-handler@0.2.0" (instance)))"#)
                .expect("valid component");
        let path = write(&dir, "http.wasm", &component);
        Wtq::new().run([path.as_str(), "--list"]).fails_with(
            6,
            "imports `wasi:http/outgoing-handler@0.2.0`, which the host does not grant",
        );
    }

    #[test]
    fn an_unreadable_file() {
        Wtq::new()
            .run(["/nonexistent/tasks.wasm", "add"])
            .fails_with(6, "cannot read component `/nonexistent/tasks.wasm`");
    }

    #[test]
    fn an_unknown_task_lists_the_known_ones() {
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "divide".as_ref(),
            "[1,2]".as_ref(),
        ]);
        run.fails_with(5, "unknown task `divide`");
        assert!(run.stderr.contains("add, mul, xsum, fib"), "{}", run.stderr);
    }

    #[test]
    fn malformed_json_arguments() {
        Wtq::new()
            .run([guest("math").as_os_str(), "add".as_ref(), "[2,".as_ref()])
            .fails_with(2, "malformed JSON in arguments `[2,`");
    }

    #[test]
    fn arguments_of_the_wrong_type_name_the_parameter() {
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "add".as_ref(),
            r#"["two", 3]"#.as_ref(),
        ]);
        run.fails_with(5, "invalid_args");
        assert!(
            run.stderr.contains("`x`"),
            "names the parameter: {}",
            run.stderr
        );
    }

    #[test]
    fn arguments_of_the_wrong_arity() {
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "add".as_ref(),
            "[1,2,3]".as_ref(),
        ]);
        run.fails_with(5, "takes 2 arguments but 3 were given");
        let run = Wtq::new().run([guest("math").as_os_str(), "add".as_ref(), "[1]".as_ref()]);
        run.fails_with(5, "missing argument `y`");
    }

    #[test]
    fn arguments_over_the_size_limit() {
        let big = format!("[\"{}\"]", "x".repeat(2048));
        let run = Wtq::new().run([
            guest("chaos").as_os_str(),
            "echo".as_ref(),
            big.as_ref(),
            "--max-args".as_ref(),
            "1KiB".as_ref(),
        ]);
        run.fails_with(15, "args_too_large");
    }

    #[test]
    fn a_bad_limit_value() {
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "add".as_ref(),
            "[1,2]".as_ref(),
            "--memory".as_ref(),
            "lots".as_ref(),
        ]);
        run.fails_with(2, "invalid size `lots`");
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "add".as_ref(),
            "[1,2]".as_ref(),
            "--time-limit".as_ref(),
            "soon".as_ref(),
        ]);
        run.fails_with(2, "invalid duration `soon`");
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "add".as_ref(),
            "[1,2]".as_ref(),
            "--fuel".as_ref(),
            "plenty".as_ref(),
        ]);
        run.fails_with(2, "invalid number `plenty`");
        let run = Wtq::new().run([
            guest("math").as_os_str(),
            "add".as_ref(),
            "[1,2]".as_ref(),
            "--time-limit".as_ref(),
            "10000000000000000000".as_ref(),
        ]);
        run.fails_with(2, "--time-limit");
        assert!(run.stderr.contains("too long"), "{}", run.stderr);
    }

    #[test]
    fn a_missing_task_name_says_which_argument() {
        let run = Wtq::new().run([guest("math").as_os_str()]);
        run.fails_with(2, "<TASK>");
    }
}
