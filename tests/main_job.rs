//! The main job, run the way a user runs it: `cargo run --example
//! moe_training -- …` (debug profile, so it reuses the test build's
//! artifacts), small. It must train, print the replica check with equal
//! per-rank checksums, and turn bad flags into clear errors, not panics.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// A hard limit per invocation (it may have to build the example first).
const LIMIT: Duration = Duration::from_secs(900);

struct Run {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `cargo run --quiet --example moe_training -- <args>`, killed (and the test
/// failed) if it runs past [`LIMIT`].
fn main_job(args: &[&str]) -> Run {
    main_job_in(Command::new(env!("CARGO")), args)
}

/// [`main_job`] under a limit on virtual memory (`ulimit -v`, in KiB): an
/// allocation past it fails instead of being overcommitted.
fn main_job_with_memory_limit(kib: u64, args: &[&str]) -> Run {
    if cfg!(not(unix)) {
        return main_job(args);
    }
    // Build outside the limit: only the job itself runs under it.
    let build = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", "moe_training"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("start cargo");
    assert!(build.success(), "the main job does not build");
    let mut command = Command::new("sh");
    command.args([
        "-c",
        r#"ulimit -v "$0" && exec "$@""#,
        &kib.to_string(),
        env!("CARGO"),
    ]);
    main_job_in(command, args)
}

fn main_job_in(mut command: Command, args: &[&str]) -> Run {
    let mut child = command
        .args(["run", "--quiet", "--example", "moe_training", "--"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cargo");
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            pipe.read_to_string(&mut text)
                .expect("read the job's output");
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cargo") {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`cargo run --example moe_training -- {args:?}` ran past {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    };
    Run {
        success: status.success(),
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn assert_no_panic(run: &Run) {
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text.contains("panicked") && !text.contains("RUST_BACKTRACE"),
            "the job panicked:\n{text}"
        );
    }
}

#[test]
fn trains_and_reports_bit_identical_replicas() {
    let run = main_job(&["--steps", "12", "--ranks", "3"]);
    assert!(
        run.success,
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_no_panic(&run);
    let out = &run.stdout;
    assert!(
        out.contains("all 3 replicas hold bit-identical parameters"),
        "no replica check line:\n{out}"
    );
    assert!(out.contains("12 steps on 3 ranks"), "{out}");
    let checksums = checksums(out);
    assert_eq!(
        checksums.iter().map(|(rank, _)| *rank).collect::<Vec<_>>(),
        vec![0, 1, 2],
        "{out}"
    );
    assert!(
        checksums.iter().all(|(_, c)| *c == checksums[0].1),
        "checksums differ: {checksums:?}"
    );
    // The plan table lists the experts as conditional and the encoder as always.
    assert!(
        out.lines()
            .any(|l| l.starts_with("encoder.weight") && l.contains("always")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("experts.0.fc1.weight") && l.contains("conditional")),
        "{out}"
    );
}

/// The `(rank, checksum)` pairs of the replica check, from lines such as
/// `  rank R: parameters checksum XXXXXXXXXXXXXXXX ok`.
fn checksums(out: &str) -> Vec<(usize, String)> {
    let mut checksums = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.trim().strip_prefix("rank ") else {
            continue;
        };
        let Some((rank, rest)) = rest.split_once(": parameters checksum ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let checksum = words.next().expect("a checksum");
        assert_eq!(words.next(), Some("ok"), "{line}");
        assert_eq!(checksum.len(), 16, "{line}");
        u64::from_str_radix(checksum, 16).expect("a hexadecimal checksum");
        checksums.push((
            rank.parse::<usize>().expect("a rank number"),
            checksum.to_owned(),
        ));
    }
    checksums
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let args = ["--steps", "5", "--ranks", "3", "--hidden", "8"];
    let first = main_job(&args);
    let second = main_job(&args);
    let other_seed = main_job(&[&args[..], &["--seed", "8"]].concat());
    for run in [&first, &second, &other_seed] {
        assert!(
            run.success,
            "stdout:\n{}\nstderr:\n{}",
            run.stdout, run.stderr
        );
    }
    let (first, second) = (checksums(&first.stdout), checksums(&second.stdout));
    assert_eq!(first.len(), 3);
    assert_eq!(first, second, "two runs with one seed ended differently");
    assert_ne!(
        first[0].1,
        checksums(&other_seed.stdout)[0].1,
        "another seed should train other parameters"
    );
}

#[test]
fn zero_ranks_is_a_clear_usage_error() {
    let run = main_job(&["--ranks", "0", "--steps", "1"]);
    assert!(!run.success, "stdout:\n{}", run.stdout);
    assert_eq!(
        run.code,
        Some(2),
        "clap's usage-error exit code\n{}",
        run.stderr
    );
    assert_no_panic(&run);
    assert!(
        run.stderr.contains("error:")
            && run.stderr.contains("'0'")
            && run.stderr.contains("--ranks"),
        "unclear error:\n{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("replicas"),
        "it trained anyway:\n{}",
        run.stdout
    );
}

#[test]
fn an_unavailable_collective_is_a_clear_error() {
    let run = main_job(&["--collective", "mpi", "--steps", "1", "--ranks", "2"]);
    assert!(!run.success, "stdout:\n{}", run.stdout);
    assert_no_panic(&run);
    let stderr = run.stderr.to_lowercase();
    assert!(
        stderr.contains("error") && stderr.contains("mpi") && stderr.contains("collective"),
        "unclear error:\n{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("replicas"),
        "it trained anyway:\n{}",
        run.stdout
    );
}

/// Asserts that `run` failed with exit code `code` and one error line holding
/// every one of `needles`, without panicking, aborting or training.
fn assert_one_line_error(run: &Run, code: i32, needles: &[&str]) {
    let context = format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(run.code, Some(code), "{context}");
    assert_no_panic(run);
    assert!(
        !run.stderr.contains("memory allocation"),
        "an allocation failed: {context}"
    );
    assert!(!run.stdout.contains("replicas"), "it trained: {context}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    let errors: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("error"))
        .collect();
    assert_eq!(errors.len(), 1, "not one error line: {context}");
    let line = lines[errors[0]];
    // The message is one line: whatever follows is a separate paragraph.
    assert!(
        lines.get(errors[0] + 1).is_none_or(|next| next.is_empty()),
        "the message runs onto a second line: {context}"
    );
    for needle in needles {
        assert!(line.contains(needle), "{needle:?} missing from {line:?}");
    }
}

#[test]
fn learning_rates_that_cannot_train_are_usage_errors() {
    for lr in ["nan", "inf", "-inf", "-1", "0", "fast"] {
        let run = main_job(&["--lr", lr, "--steps", "1"]);
        assert_one_line_error(&run, 2, &["--lr", &format!("'{lr}'")]);
    }
    let run = main_job(&["--lr", "-1", "--steps", "1"]);
    assert_one_line_error(&run, 2, &["--lr", "must be a finite number greater than 0"]);
}

#[test]
fn a_diverging_run_fails_naming_the_step() {
    let started = Instant::now();
    let run = main_job(&["--lr", "1e30", "--steps", "50", "--hidden", "8"]);
    assert_one_line_error(&run, 1, &["non-finite loss at step ", "--lr", "1e30"]);
    // Adam moves every parameter by about the learning rate at step 1: the
    // loss is infinite from step 2 on.
    let line = run.stderr.lines().find(|l| l.starts_with("error")).unwrap();
    let step: u32 = line
        .split("non-finite loss at step ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|step| step.parse().ok())
        .unwrap_or_else(|| panic!("no step in {line:?}"));
    assert!((1..=5).contains(&step), "{line}");
    assert!(started.elapsed() < LIMIT);
}

#[test]
fn the_step_schedule_is_not_allocated_up_front() {
    // u32::MAX steps used to reserve 16 GiB per rank for the loss curve
    // before the first step. Under an 8 GiB limit on virtual memory the job
    // must still start training: the diverging learning rate then ends it
    // at step 2.
    let run = main_job_with_memory_limit(
        8 << 20,
        &["--steps", "4294967295", "--lr", "1e30", "--hidden", "8"],
    );
    assert_one_line_error(&run, 1, &["non-finite loss at step 2"]);
}

#[test]
fn sizes_beyond_memory_are_refused_before_allocating() {
    for (args, needles) in [
        (
            &["--hidden", "100000"][..],
            &["--hidden 100000", "lower --hidden"][..],
        ),
        (
            &["--batch-size", "4294967295"],
            &["--batch-size 4294967295", "lower --batch-size"],
        ),
        (
            &["--experts", "1024", "--hidden", "4096"],
            &[
                "--experts 1024",
                "--hidden 4096",
                "lower --hidden, --experts",
            ],
        ),
    ] {
        let started = Instant::now();
        // The estimate comes before any allocation: the job fails at once,
        // even under an 8 GiB limit on virtual memory.
        let run = main_job_with_memory_limit(8 << 20, &[args, &["--steps", "1"]].concat());
        assert_one_line_error(
            &run,
            2,
            &[&[" of memory", "available"][..], needles].concat(),
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_bucket_cap_past_the_address_space_is_refused() {
    // 2^54 KiB is 2^64 bytes: it used to wrap around to a cap of 0.
    let run = main_job(&["--bucket-kib", "18014398509481984", "--steps", "1"]);
    assert_one_line_error(
        &run,
        2,
        &[
            "--bucket-kib",
            "'18014398509481984'",
            "at most 18014398509481983 KiB",
        ],
    );
    let run = main_job(&["--bucket-kib", "0", "--steps", "1"]);
    assert_one_line_error(&run, 2, &["--bucket-kib", "'0'"]);
    // The largest cap that fits is accepted: every parameter in one bucket.
    let run = main_job(&[
        "--bucket-kib",
        "18014398509481983",
        "--steps",
        "2",
        "--ranks",
        "2",
        "--hidden",
        "8",
    ]);
    assert!(
        run.success,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stdout
            .contains("all 2 replicas hold bit-identical parameters")
    );
}
