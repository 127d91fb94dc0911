//! The UAPI `set` parser over arbitrary bytes (a request comes from whoever may open the
//! control socket, or from the host app through `wgSetConfig`). Nothing may panic; an error
//! names a line that exists; a request that parses is applied, or refused with the state left
//! as it was; and the `get` answer, read back as a `set` on a new device, gives the same
//! state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunpipe::wireguard::uapi::{
    configuration_lines, format_get, parse_set, parse_set_bytes, UapiState,
};

fuzz_target!(|data: &[u8]| {
    let request = match parse_set_bytes(data) {
        Ok(request) => request,
        Err(e) => {
            let lines = data.split(|&byte| byte == b'\n').count();
            assert!(e.line() >= 1 && e.line() <= lines, "{e}");
            let _ = format!("{e:?}");
            return;
        }
    };
    let mut state = UapiState::new();
    let before = state.clone();
    if state.apply(&request).is_err() {
        assert_eq!(state, before);
        return;
    }
    let get = format_get(&state, &[]);
    // Without a private key, a peer may stand that a new device would take for its own
    // (wireguard-go's own key is all zeros until one is set): read back only with a key.
    if state.private_key().is_some() {
        let again = format!("replace_peers=true\n{}", configuration_lines(&get));
        let again = parse_set(&again).expect("a get answer reads back as a set");
        let mut read_back = UapiState::new();
        read_back.apply(&again).expect("a get answer applies");
        assert_eq!(read_back, state);
    }
});
