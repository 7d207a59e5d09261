//! d
pub fn x() {}
