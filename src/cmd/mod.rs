//! One module per command; `common` and `paths` hold what several of them share.

pub mod check;
pub mod cleanup;
pub mod common;
pub mod compare;
pub mod export;
pub mod lab;
pub mod list;
pub mod paths;
pub mod plot;
pub mod report;
pub mod run;
