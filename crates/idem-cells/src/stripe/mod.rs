//! Stripe cells (partners.md §2, "Stripe").

pub mod charge;
