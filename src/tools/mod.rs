//! The tools around the service, apart from its core: the provider simulator, a throwaway
//! PostgreSQL cluster, the benchmarks, the demo and the CSV import. None of the service's
//! own code (api, worker, db, domain, provider) depends on them.

pub mod bench;
pub mod demo;
pub mod import;
pub mod pg;
pub mod sim;
