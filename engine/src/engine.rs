//! The decision engine (in progress).
