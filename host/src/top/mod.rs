//! `pmhost top`'s model and screen: call rates and crash counts from successive snapshots, and the frame drawn
//! from them with ratatui.

pub mod model;
pub mod view;
