//! The call timeline for other tools, one module per format.

pub mod chrome;
pub mod folded;
pub mod json;
