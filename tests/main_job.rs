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
    let mut child = Command::new(env!("CARGO"))
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
