//! Helpers for calling the C ABI from Rust, shared by this binary and `tests/abi.rs` (which
//! includes this file by path).

use tunpipe_ffi::{tunpipe_config_default, TunpipeConfig, TUNPIPE_OK};

/// The default config, as a C host gets it from `tunpipe_config_default`.
pub fn default_config() -> TunpipeConfig {
    let mut c = std::mem::MaybeUninit::<TunpipeConfig>::uninit();
    assert_eq!(
        // SAFETY: the pointer is valid for a write of one TunpipeConfig.
        unsafe { tunpipe_config_default(c.as_mut_ptr()) },
        TUNPIPE_OK
    );
    // SAFETY: tunpipe_config_default initialized all of it.
    unsafe { c.assume_init() }
}
