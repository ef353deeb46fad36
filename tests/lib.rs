//! Anchor for the top-level integration-test package; the tests live in `tests/main.rs`.
