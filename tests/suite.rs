//! Most of idem's integration tests in one binary: linked once (ten binaries of ~145 MB
//! each took most of a test build), and one PostgreSQL server and one Kafka broker for all
//! of them. The tests that install process-wide telemetry (`trace`, `metrics`) and the
//! fault campaign (`chaos`, which kills processes and measures) keep binaries of their own.

mod api;
mod conformance;
mod console;
mod e2e;
mod failover;
mod human;
mod kafka;
mod mcp;
mod stores;
