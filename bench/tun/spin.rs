//! The `spin` section: the spin window against latency and CPU.

use crate::contenders::{Contender, Work};
use crate::matrix::run_matrix;
use crate::Timing;
use serde_json::Value;

/// The spin window (`Config::spin`) against latency and CPU: how long an idle actor spins
/// before it yields and parks; and the other spin policy (`Config::yield_while_spinning`).
/// A wake-up costs tens of µs on a small VM.
pub fn spin_section(t: &Timing) -> Value {
    let mut contenders = vec![Contender::GuideSync];
    for workers in [0usize, 1] {
        for spin in [0u64, 10, 50, 200] {
            contenders.push(Contender::TunpipeSpin(workers, spin));
        }
        contenders.push(Contender::TunpipeOtherSpinPolicy(workers));
    }
    run_matrix(t, Work::Reflect, &contenders, &[1, 32], &[64])
}
