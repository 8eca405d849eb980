//! The routing table: contacts in k-buckets by XOR distance from our address. Long-lived
//! contacts are kept over newcomers (they are the likeliest to stay), a contact that stops
//! answering makes room, and a bucket holds at most two contacts behind one host, so one
//! machine cannot fill a bucket with identities.

use crate::identity::{Address, PublicKey, ADDRESS_LEN};

/// A node to talk to: its key (the address is its hash) and where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The node's key.
    pub key: PublicKey,
    /// Where it listens ("udp://192.0.2.1:7070").
    pub addr: String,
}

impl Contact {
    /// The contact's DHT address (hash of its key).
    pub fn address(&self) -> Address {
        self.key.address()
    }

    /// The host part of the address (without scheme and port): the bucket-diversity unit.
    fn host(&self) -> &str {
        let a = self.addr.split_once("://").map_or(self.addr.as_str(), |(_, r)| r);
        a.rsplit_once(':').map_or(a, |(h, _)| h)
    }
}

/// XOR distance, comparable as bytes.
pub fn distance(a: &Address, b: &Address) -> [u8; ADDRESS_LEN] {
    let mut d = [0u8; ADDRESS_LEN];
    for (d, (x, y)) in d.iter_mut().zip(a.0.iter().zip(b.0.iter())) {
        *d = x ^ y;
    }
    d
}

/// Contacts per bucket (and the replication factor).
pub const K: usize = 16;
/// Contacts per bucket behind one host.
const PER_HOST: usize = 2;
/// Missed answers after which a contact gives way.
const STALE_AFTER: u32 = 2;

struct Entry {
    contact: Contact,
    address: Address,
    failures: u32,
}

/// The Kademlia routing table: k-buckets by XOR distance from our address.
pub struct Table {
    me: Address,
    buckets: Vec<Vec<Entry>>,
}

impl Table {
    /// An empty table around `me`.
    pub fn new(me: Address) -> Table {
        Table { me, buckets: (0..=ADDRESS_LEN * 8).map(|_| Vec::new()).collect() }
    }

    fn bucket(&self, a: &Address) -> usize {
        let d = distance(&self.me, a);
        let lz: u32 =
            d.iter().position(|b| *b != 0).map_or(ADDRESS_LEN as u32 * 8, |i| i as u32 * 8 + d[i].leading_zeros());
        lz as usize
    }

    /// A contact answered (or introduced itself): insert or refresh it.
    pub fn seen(&mut self, c: &Contact) {
        let address = c.address();
        if address == self.me {
            return;
        }
        let i = self.bucket(&address);
        let b = &mut self.buckets[i];
        if let Some(pos) = b.iter().position(|e| e.address == address) {
            let mut e = b.remove(pos);
            e.failures = 0;
            e.contact.addr.clone_from(&c.addr);
            b.push(e);
            return;
        }
        if b.iter().filter(|e| e.contact.host() == c.host()).count() >= PER_HOST {
            return;
        }
        if b.len() >= K {
            // Make room only in place of one that stopped answering.
            match b.iter().position(|e| e.failures >= STALE_AFTER) {
                Some(pos) => {
                    b.remove(pos);
                }
                None => return,
            }
        }
        b.push(Entry { contact: c.clone(), address, failures: 0 });
    }

    /// A contact did not answer.
    pub fn failed(&mut self, a: &Address) {
        let i = self.bucket(a);
        if let Some(e) = self.buckets[i].iter_mut().find(|e| e.address == *a) {
            e.failures += 1;
        }
    }

    /// Up to `n` live contacts closest to `target`.
    pub fn closest(&self, target: &Address, n: usize) -> Vec<Contact> {
        let mut all: Vec<(&Entry, [u8; ADDRESS_LEN])> = self
            .buckets
            .iter()
            .flatten()
            .filter(|e| e.failures < STALE_AFTER)
            .map(|e| (e, distance(&e.address, target)))
            .collect();
        all.sort_by_key(|e| e.1);
        all.into_iter().take(n).map(|(e, _)| e.contact.clone()).collect()
    }

    /// Contacts held.
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    /// Whether no contact is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate memory held (for the scale figures).
    pub fn memory_bytes(&self) -> usize {
        self.buckets.iter().flatten().map(|e| std::mem::size_of::<Entry>() + e.contact.addr.capacity()).sum::<usize>()
            + self.buckets.capacity() * std::mem::size_of::<Vec<Entry>>()
    }
}
