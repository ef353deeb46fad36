//! Any UTF-8 input: the front end returns a checked file or diagnostics, and rendering them never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|src: &str| {
    match nibble_compiler::dsl::check_source("fuzz.nib", src) {
        Ok(checked) => {
            let _ = nibble_compiler::dsl::describe(&checked);
        }
        Err(diagnostics) => {
            assert!(!diagnostics.is_empty());
            let _ = diagnostics.render();
        }
    }
});
