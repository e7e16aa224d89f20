//! The one-shot commands beside the exporter: [`rank`] (probe for a while, print the ranking)
//! and [`healthcheck`] (ask a running exporter whether it is healthy).

pub mod healthcheck;
pub mod rank;
