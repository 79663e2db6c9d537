//! RocksDB log store and state machine (being written).
