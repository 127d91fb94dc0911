//! The TUN a command runs on: created (the default) or attached to (`--attach`), with its
//! addresses, and put back as it was at the end.
//!
//! Each step has its own error, so that "the name is taken", "this is not a TUN" and "this
//! address cannot be assigned" are told apart, and every message names the interface the
//! kernel actually made (a name like `t%d` is a pattern the kernel fills in).

use super::args::Net;
use super::CliResult;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;
use tunpipe::TunDevice;

/// What to set up.
pub struct TunSpec<'a> {
    /// The name asked for (a pattern such as `t%d`, or empty, lets the kernel choose).
    pub name: &'a str,
    /// Run on an existing persistent TUN instead of creating one.
    pub attach: bool,
    pub ipv4: &'a [Net<Ipv4Addr>],
    pub ipv6: &'a [Net<Ipv6Addr>],
    /// The MTU to set (None: leave the interface's own, for an attached TUN).
    pub mtu: Option<u16>,
}

/// A TUN set up for a command.
pub struct Tun {
    pub device: TunDevice,
    /// The interface's name as the kernel made it.
    pub name: String,
    /// The MTU the interface has.
    pub mtu: usize,
    attached: bool,
    /// Addresses this command added to an attached TUN, removed again at the end.
    added: Vec<IpAddr>,
}

impl Tun {
    /// Creates (or, with `attach`, opens) the TUN, sets its MTU and adds the addresses.
    ///
    /// # Errors
    /// One line naming the step that failed and the interface.
    pub fn set_up(spec: &TunSpec<'_>) -> CliResult<Tun> {
        let exists = interface_exists(spec.name);
        if exists && !spec.attach {
            return Err(format!(
                "interface {} already exists; tunpipe creates its own TUN (to run on an \
                 existing persistent TUN, add --attach)",
                spec.name
            )
            .into());
        }
        if spec.attach && !exists {
            return Err(format!("--attach: there is no interface {}", spec.name).into());
        }
        let builder = || {
            let mut builder = tun_rs::DeviceBuilder::new().name(spec.name);
            if let Some(mtu) = spec.mtu {
                builder = builder.mtu(mtu);
            }
            builder
        };
        // A TUN this command creates gets offload (Linux: TCP segments of up to 64 KiB per
        // read and write) where the kernel has it; an attached one stays as it was made.
        #[cfg(target_os = "linux")]
        let offloaded = (!spec.attach)
            .then(|| builder().offload(true).build_sync().ok())
            .flatten();
        #[cfg(not(target_os = "linux"))]
        let offloaded = None;
        let device = offloaded
            .map_or_else(|| builder().build_sync(), Ok)
            .map_err(|e| {
                if spec.attach {
                    format!(
                        "cannot attach to {}: {e} (is it a TUN, persistent, and not in use?)",
                        spec.name
                    )
                } else {
                    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                        " (needs root or CAP_NET_ADMIN)"
                    } else {
                        ""
                    };
                    format!("cannot create TUN device {}: {e}{hint}", spec.name)
                }
            })?;
        let name = device
            .name()
            .map_err(|e| format!("cannot read the name of the new TUN: {e}"))?;
        let mtu = usize::from(
            device
                .mtu()
                .map_err(|e| format!("cannot read the MTU of {name}: {e}"))?,
        );
        let mut tun = Tun {
            device: TunDevice::new(device),
            name,
            mtu,
            attached: spec.attach,
            added: Vec::new(),
        };
        for net in spec.ipv4 {
            let assigned = tun.device.inner().add_address_v4(net.addr, net.prefix);
            tun.record(IpAddr::V4(net.addr), net.prefix, assigned)?;
        }
        for net in spec.ipv6 {
            let assigned = tun.device.inner().add_address_v6(net.addr, net.prefix);
            tun.record(IpAddr::V6(net.addr), net.prefix, assigned)?;
        }
        Ok(tun)
    }

    fn record(&mut self, addr: IpAddr, prefix: u8, assigned: std::io::Result<()>) -> CliResult {
        assigned.map_err(|e| format!("cannot assign {addr}/{prefix} to {}: {e}", self.name))?;
        if self.attached {
            self.added.push(addr);
        }
        Ok(())
    }

    /// Puts the interface back: a created TUN goes away with its fd (the kernel removes the
    /// interface, which takes tens of milliseconds of RCU grace periods); an attached one
    /// stays, without the addresses this command added. Returns what happened, for the
    /// report.
    pub fn tear_down(self) -> String {
        let at = Instant::now();
        if !self.attached {
            let name = self.name.clone();
            drop(self.device);
            return format!(
                "{} (the kernel removing {name}; the engine had already stopped)",
                super::report::duration(at.elapsed())
            );
        }
        let mut failed = Vec::new();
        for addr in &self.added {
            if let Err(e) = self.device.inner().remove_address(*addr) {
                failed.push(format!("{addr}: {e}"));
            }
        }
        let left = if failed.is_empty() {
            String::new()
        } else {
            format!("; could not remove {}", failed.join(", "))
        };
        format!(
            "{} stays (attached, persistent); the {} address(es) added for this run were \
             removed{left}",
            self.name,
            self.added.len() - failed.len()
        )
    }
}

/// Is there an interface of this exact name in this namespace? (A pattern or an empty name
/// asks the kernel for a new one, so it never exists.)
fn interface_exists(name: &str) -> bool {
    if name.is_empty() || name.contains('%') {
        return false;
    }
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}
