//! Model providers (being written).
