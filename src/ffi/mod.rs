//! The C ABI (see ffi/tunpipe.h): converts types and calls the safe API, no engine logic.
