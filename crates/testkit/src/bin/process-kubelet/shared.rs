//! State shared by the dispatcher and all pod workers: client, config, loopback IP pool.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kube::Client;

use crate::images::ImageMap;
use crate::process::{ProcessGroups, Reaper};

pub struct Shared {
    pub client: Client,
    pub node: String,
    pub images: ImageMap,
    pub pods_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// Value of `PROCESS_KUBELET_CLUSTER` in every container's environment.
    pub marker: String,
    pub groups: ProcessGroups,
    pub reaper: Arc<Reaper>,
    pub ips: Mutex<IpPool>,
}

/// Loopback addresses 127.0.1.1 ..= 127.0.254.254 (127.0.0.0/24 is left to the control plane),
/// handed out round-robin so a freed address is not reused soon.
#[derive(Default)]
pub struct IpPool {
    next: u32,
    used: HashSet<Ipv4Addr>,
}

const POOL_SIZE: u32 = 254 * 254;

impl IpPool {
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        for _ in 0..POOL_SIZE {
            let n = self.next;
            self.next = (self.next + 1) % POOL_SIZE;
            let ip = Ipv4Addr::new(127, 0, (1 + n / 254) as u8, (1 + n % 254) as u8);
            if self.used.insert(ip) {
                return Some(ip);
            }
        }
        None
    }

    /// Marks an address already in use (a pod that kept its IP across a kubelet restart).
    pub fn reserve(&mut self, ip: Ipv4Addr) {
        self.used.insert(ip);
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_addresses_outside_control_plane_range() {
        let mut pool = IpPool::default();
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a, Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(b, Ipv4Addr::new(127, 0, 1, 2));
        pool.release(a);
        pool.reserve(Ipv4Addr::new(127, 0, 1, 3));
        assert_eq!(pool.allocate().unwrap(), Ipv4Addr::new(127, 0, 1, 4));
    }
}
