//! Helpers every part of the C ABI uses: pointer checks, copying text and sized structs into
//! a caller's memory, and the host's context pointer.

use crate::error::{
    FfiError, FfiResult, TUNPIPE_ERR_BUFFER_TOO_SMALL, TUNPIPE_ERR_INVALID_ARGUMENT,
    TUNPIPE_ERR_NULL_POINTER, TUNPIPE_ERR_STRUCT_SIZE, TUNPIPE_OK,
};
use std::ffi::{c_char, c_void};

/// Checks a pointer argument: NULL and misaligned pointers are error codes, never undefined
/// behaviour.
pub(crate) fn check_ptr<T>(ptr: *const T, what: &str) -> FfiResult {
    if ptr.is_null() {
        Err(FfiError::null(what))
    } else if !ptr.is_aligned() {
        Err(FfiError::new(
            TUNPIPE_ERR_INVALID_ARGUMENT,
            format!("{what} is misaligned"),
        ))
    } else {
        Ok(())
    }
}

/// [`check_ptr`] for an output pointer.
pub(crate) fn check_ptr_mut<T>(ptr: *mut T, what: &str) -> FfiResult {
    check_ptr(ptr.cast_const(), what)
}

/// Writes `value` through a checked output pointer.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, what: &str, value: T) -> FfiResult {
    check_ptr_mut(out, what)?;
    // SAFETY: checked non-null and aligned; the caller promises it is writable.
    unsafe { out.write(value) };
    Ok(())
}

/// Copies `text` into a caller's buffer as a NUL-terminated string, truncated (on a UTF-8
/// boundary) to fit, and returns the text's full length in bytes without the NUL, as
/// `snprintf` does. A NULL `buf` is allowed only with `len == 0` (a length query).
///
/// # Safety
/// `buf` must be NULL or valid for writes of `len` bytes.
pub(crate) unsafe fn copy_text(text: &str, buf: *mut c_char, len: usize) -> FfiResult<i32> {
    let full = i32::try_from(text.len()).unwrap_or(i32::MAX);
    if len == 0 {
        return Ok(full);
    }
    if buf.is_null() {
        return Err(FfiError::null("buf"));
    }
    let mut n = text.len().min(len - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: the caller promises `buf` holds `len` bytes; `n + 1 <= len`, and `text` is a
    // distinct Rust allocation, so the ranges cannot overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
    Ok(full)
}

/// Copies the whole of `text` and its NUL into `buf[0..len]`, or nothing: a text cut short
/// (a histogram, a JSON document) would be worse than none. `*needed` (if not NULL) gets the
/// bytes required including the NUL, so a caller can ask with `buf = NULL, len = 0` first.
///
/// # Safety
/// `buf` NULL or writable for `len` bytes; `needed` NULL or writable.
pub(crate) unsafe fn write_string(
    text: &str,
    buf: *mut c_char,
    len: usize,
    needed: *mut usize,
) -> FfiResult<i32> {
    let need = text.len() + 1;
    if !needed.is_null() {
        // SAFETY: the caller promises `needed` is writable when it is not NULL.
        unsafe { write_out(needed, "needed", need) }?;
    }
    if len < need {
        return Err(FfiError::new(
            TUNPIPE_ERR_BUFFER_TOO_SMALL,
            format!("buffer holds {len} bytes, {need} needed"),
        ));
    }
    if buf.is_null() {
        return Err(FfiError::new(TUNPIPE_ERR_NULL_POINTER, "buf is NULL"));
    }
    // SAFETY: `buf` holds `len >= need` bytes (the caller's promise), so the whole text
    // and its NUL fit.
    unsafe { copy_text(text, buf, len) }?;
    Ok(TUNPIPE_OK)
}

/// Structs that start with a `u32` size field and have no padding, so a prefix of their
/// bytes is a valid older version.
pub(crate) trait Sized32: Copy {
    /// The value with its `size` field set.
    fn with_size(self, size: u32) -> Self;
}

/// The bytes [`write_sized`] will write into the caller's struct: as many as its `size`
/// field says it holds, at most ours. A size smaller than the header (8 bytes) is an error.
/// A call that can fail for other reasons too checks this first when the caller's struct is
/// the likelier mistake.
///
/// # Safety
/// `out` must be NULL or aligned and valid for a read of its `size` field.
pub(crate) unsafe fn sized_len<T: Sized32>(out: *mut T) -> FfiResult<usize> {
    check_ptr_mut(out, "out")?;
    // SAFETY: checked non-null and aligned; the caller promises the struct starts with a
    // readable u32 `size` field.
    let size = unsafe { out.cast::<u32>().read() } as usize;
    if size < 8 {
        return Err(FfiError::new(
            TUNPIPE_ERR_STRUCT_SIZE,
            format!("size field is {size}; set it to sizeof the struct before the call"),
        ));
    }
    Ok(size.min(std::mem::size_of::<T>()))
}

/// Writes `value` into the caller's struct: as many bytes as its `size` field says it
/// holds, at most ours. A size smaller than the header (8 bytes) is an error.
///
/// # Safety
/// `out` must be NULL or aligned and valid for a read of its `size` field and for writes
/// of `size` bytes.
pub(crate) unsafe fn write_sized<T: Sized32>(out: *mut T, value: T) -> FfiResult<i32> {
    // SAFETY: the caller's promise, passed on.
    let n = unsafe { sized_len(out) }?;
    let value = value.with_size(n as u32);
    // SAFETY: `value` is a padding-free repr(C) struct (Sized32's promise), so its first `n`
    // bytes are initialized; the caller promises `size >= n` writable bytes at `out`.
    unsafe {
        std::ptr::copy_nonoverlapping((&value as *const T).cast::<u8>(), out.cast::<u8>(), n)
    };
    Ok(TUNPIPE_OK)
}

/// A host's context pointer, handed back to its callbacks.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostContext(pub *mut c_void);

// SAFETY: tunpipe never dereferences the context; it only passes it back to the host's own
// callback, from the threads the header documents. The host promises (in the header) that
// its context may be used from those threads.
unsafe impl Send for HostContext {}
// SAFETY: as above; tunpipe shares the pointer value, never the pointee.
unsafe impl Sync for HostContext {}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}
