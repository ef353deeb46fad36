pub mod manifest {}
