//! tunpipe's tunnel against a real WireGuard peer, as root (Linux): wireguard-go in a second
//! network namespace behind a veth ([`tunpipe_testkit::wgpeer`]), tunpipe's engine on a real
//! TUN in the test's own namespace, the kernel's `ping` and `iperf3` as the traffic.
//!
//! Handshakes started by either end; ping both ways over IPv4 and IPv6; TCP both ways; a
//! restart; a rebind under traffic; a stop while a handshake is pending; a wrong key;
//! garbage and replayed datagrams; a source outside AllowedIPs; floods of initiations
//! (bad mac1: dropped; valid mac1: cookies, which wireguard-go gets through with); persistent
//! keepalives counted where they arrive; a peer that goes away (nftables, then its process)
//! and comes back; conservation in each direction after every test. Tests that cannot run
//! here (not root, or no wireguard-go) show as ignored, with the reason.

#[cfg(target_os = "linux")]
mod peer;

fn main() {
    #[cfg(target_os = "linux")]
    {
        use tunpipe_testkit::trials::{root_trials, run_one_at_a_time};
        let problem = tunpipe_testkit::tun::privilege_problem()
            .or_else(tunpipe_testkit::wgpeer::wireguard_go_problem);
        let trials = root_trials(&peer::TESTS, &problem, |test| {
            tunpipe_testkit::thread::on_thread("wireguard", Some(peer::WATCHDOG), move || {
                tunpipe_testkit::netns::in_fresh_netns(tunpipe_testkit::netns::Ipv6::NoDad, test)
            })
        });
        run_one_at_a_time(trials)
    }
}
