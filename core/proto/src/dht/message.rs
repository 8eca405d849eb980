//! DHT messages and their encoding.

use super::record::{Reader, RecordError, SignedRecord};
use super::table::{Contact, K};
use crate::identity::{Address, ADDRESS_LEN};

/// Records one Values answer carries at most.
pub const MAX_VALUES: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
/// A DHT message (Kademlia's requests and answers, plus the sender's record to hold).
pub enum Message {
    /// Asks for the contacts closest to `target`.
    FindNode {
        /// The request id (answers echo it).
        id: u32,
        /// The address looked for.
        target: Address,
    },
    /// Answers FindNode: the closest contacts the sender knows.
    Nodes {
        /// The request's id.
        id: u32,
        /// The contacts.
        contacts: Vec<Contact>,
    },
    /// Asks for the records stored under `key` (or the closest contacts).
    FindValue {
        /// The request id (answers echo it).
        id: u32,
        /// The DHT key: a node's address or a service's.
        key: Address,
    },
    /// Answers FindValue: records held under the key, and closer contacts.
    Values {
        /// The request's id.
        id: u32,
        /// Signed records (checked by the receiver).
        records: Vec<SignedRecord>,
        /// Closer contacts.
        contacts: Vec<Contact>,
    },
    /// The sender's own record, for the receiver to hold.
    Store {
        /// The signed record.
        record: SignedRecord,
    },
}

const FIND_NODE: u8 = 1;
const NODES: u8 = 2;
const FIND_VALUE: u8 = 3;
const VALUES: u8 = 4;
const STORE: u8 = 5;

fn put_contacts(b: &mut Vec<u8>, cs: &[Contact]) {
    b.push(cs.len().min(K) as u8);
    for c in cs.iter().take(K) {
        b.extend_from_slice(&c.key.to_bytes());
        let a = &c.addr.as_bytes()[..c.addr.len().min(super::record::MAX_ADDR_LEN)];
        b.push(a.len() as u8);
        b.extend_from_slice(a);
    }
}

fn get_contacts(r: &mut Reader<'_>) -> Result<Vec<Contact>, RecordError> {
    let n = r.take(1)?[0] as usize;
    if n > K {
        return Err(RecordError::TooLarge);
    }
    (0..n)
        .map(|_| {
            let key = r.key()?;
            let len = r.take(1)?[0] as usize;
            if len > super::record::MAX_ADDR_LEN {
                return Err(RecordError::TooLarge);
            }
            let addr = String::from_utf8(r.take(len)?.to_vec()).map_err(|_| RecordError::Malformed)?;
            Ok(Contact { key, addr })
        })
        .collect()
}

impl Message {
    /// The message's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(256);
        match self {
            Message::FindNode { id, target } => {
                b.push(FIND_NODE);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&target.0);
            }
            Message::Nodes { id, contacts } => {
                b.push(NODES);
                b.extend_from_slice(&id.to_be_bytes());
                put_contacts(&mut b, contacts);
            }
            Message::FindValue { id, key } => {
                b.push(FIND_VALUE);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&key.0);
            }
            Message::Values { id, records, contacts } => {
                b.push(VALUES);
                b.extend_from_slice(&id.to_be_bytes());
                b.push(records.len().min(MAX_VALUES) as u8);
                for r in records.iter().take(MAX_VALUES) {
                    let e = r.encode();
                    b.extend_from_slice(&(e.len() as u16).to_be_bytes());
                    b.extend_from_slice(&e);
                }
                put_contacts(&mut b, contacts);
            }
            Message::Store { record } => {
                b.push(STORE);
                b.extend_from_slice(&record.encode());
            }
        }
        b
    }

    /// Parses a message; malformed bytes give an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message, RecordError> {
        let mut r = Reader { b: bytes, at: 0 };
        let tag = r.take(1)?[0];
        let m = match tag {
            STORE => {
                let (record, n) = SignedRecord::decode(&bytes[1..])?;
                r.at += n;
                Message::Store { record }
            }
            FIND_NODE | NODES | FIND_VALUE | VALUES => {
                let id = u32::from_be_bytes(r.array()?);
                match tag {
                    FIND_NODE => Message::FindNode { id, target: Address(r.array::<ADDRESS_LEN>()?) },
                    FIND_VALUE => Message::FindValue { id, key: Address(r.array::<ADDRESS_LEN>()?) },
                    NODES => Message::Nodes { id, contacts: get_contacts(&mut r)? },
                    _ => {
                        let n = r.take(1)?[0] as usize;
                        if n > MAX_VALUES {
                            return Err(RecordError::TooLarge);
                        }
                        let mut records = Vec::with_capacity(n);
                        for _ in 0..n {
                            let len = u16::from_be_bytes(r.array()?) as usize;
                            let (rec, used) = SignedRecord::decode(r.take(len)?)?;
                            if used != len {
                                return Err(RecordError::Malformed);
                            }
                            records.push(rec);
                        }
                        Message::Values { id, records, contacts: get_contacts(&mut r)? }
                    }
                }
            }
            _ => return Err(RecordError::Malformed),
        };
        if r.at != bytes.len() {
            return Err(RecordError::Malformed);
        }
        Ok(m)
    }
}
