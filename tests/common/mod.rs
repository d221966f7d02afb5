//! Shared test helpers: the shop (monolith + services), echo servers and the proxy process.
#![allow(dead_code)]

pub mod bench;
pub mod echo;
pub mod otlp;
pub mod prometheus;
pub mod proxy;
pub mod rawhttp;
pub mod shop;
pub mod tools;
pub mod traffic;
