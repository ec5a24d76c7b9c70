//! `generated_programs/models.rs` is what `generated_programs/generator.rs`
//! writes. A test binary of its own, so that regenerating never needs the
//! models (or the harness they call) to compile:
//! `MASKDDP_BLESS=1 cargo test --test generated_programs_source`.

#[path = "generated_programs/generator.rs"]
mod generator;
#[allow(dead_code)] // only the generator
#[path = "../runtime/tests/common/shared.rs"]
mod shared;

#[test]
fn models_are_what_the_generator_writes() {
    let fresh = generator::generate();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/generated_programs/models.rs"
    );
    if std::env::var_os("MASKDDP_BLESS").is_some() {
        std::fs::write(path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(path).unwrap();
    assert!(
        checked_in == fresh,
        "tests/generated_programs/models.rs is not what the generator writes: \
         regenerate with `MASKDDP_BLESS=1 cargo test --test generated_programs_source`"
    );
}
