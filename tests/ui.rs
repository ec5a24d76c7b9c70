//! Compile-time behaviour of `#[ddp_model]`: every supported model shape
//! builds (and runs), every mistake is a spanned error.
//!
//! Regenerate `.stderr` files with `TRYBUILD=overwrite cargo test --test ui`,
//! then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*/*.rs");
}
