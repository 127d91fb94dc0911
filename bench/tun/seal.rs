//! The `seal` section: the matrix again with a stage that costs real CPU, ChaCha20-Poly1305.

use crate::contenders::{Contender, Work};
use crate::matrix::run_matrix;
use crate::Timing;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use serde_json::Value;
use tunpipe::stage::Reflect;
use tunpipe::{PacketBuf, Stage, Verdict};

/// `reflect`, then seal the packet in place with the tag pushed into the tailroom, then open
/// it again (see [`Work::Seal`]).
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    counter: u64,
}

impl Sealer {
    /// A sealer with its own key.
    pub fn new(key: [u8; 32]) -> Self {
        Sealer {
            cipher: ChaCha20Poly1305::new(&key.into()),
            counter: 0,
        }
    }
}

impl Stage for Sealer {
    fn process(&mut self, packet: &mut PacketBuf) -> Verdict {
        if Reflect.process(packet) == Verdict::Drop {
            return Verdict::Drop;
        }
        self.counter += 1;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.counter.to_le_bytes());
        let nonce = Nonce::from_slice(&nonce);
        let Ok(tag) = self
            .cipher
            .encrypt_in_place_detached(nonce, &[], packet.data_mut())
        else {
            return Verdict::Drop;
        };
        match packet.push_back(16) {
            Ok(room) => room.copy_from_slice(&tag),
            Err(_) => return Verdict::Drop,
        }
        let len = packet.len() - 16;
        let (body, tag) = packet.data_mut().split_at_mut(len);
        let tag = Tag::clone_from_slice(tag);
        if self
            .cipher
            .decrypt_in_place_detached(nonce, &[], body, &tag)
            .is_err()
        {
            return Verdict::Drop;
        }
        match packet.truncate(len) {
            Ok(()) => Verdict::Forward,
            Err(_) => Verdict::Drop,
        }
    }
}

pub fn matrix_seal(t: &Timing) -> Value {
    run_matrix(
        t,
        Work::Seal,
        &[
            Contender::GuideSync,
            Contender::Tunpipe(0),
            Contender::Tunpipe(1),
            Contender::Tunpipe(2),
        ],
        &[32, 256],
        &[64, 1400],
    )
}
