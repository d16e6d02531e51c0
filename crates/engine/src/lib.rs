//! Dataflow runtime: operators, keyed state, barriers, exchanges.
