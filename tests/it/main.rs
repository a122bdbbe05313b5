//! The integration tests, one binary: each module drives the real `tessera`
//! binary (or the loadgen, or the Python SDK, or the official conformance
//! suite) over real sockets, pipes and processes, for one area. One test
//! crate links once instead of once per file, which is most of a clean
//! build's time on a small machine.
//!
//! `TESSERA_BIN=/path/to/tessera cargo test --test it` runs them against
//! another build of the server.

#![allow(dead_code)]

mod common;

mod access;
mod admin;
mod audit;
mod auth;
mod bad_input;
mod bad_input_transports;
mod bench_scripts;
mod cli;
mod cluster;
mod command_tools;
mod config_file;
mod conformance;
mod features;
mod file_resources;
mod http_heads;
mod http_legacy;
mod http_modern;
mod http_paths;
mod interop_python;
mod jwt;
mod kv_mesh;
mod layers;
mod lifecycle;
mod limits;
mod loadgen;
mod netrules;
mod nginx;
mod persistence;
mod pipeline;
mod reload;
mod stdio;
mod supervision;
mod tls;
mod tools;
mod tracing;
mod upgrade;
mod valkey;
