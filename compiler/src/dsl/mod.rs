//! The `.nib` front end (being written).
