//! d
pub fn x(){}
