pub mod dp;
pub mod ptable;
pub mod suppress;
