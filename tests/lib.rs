//! Scenario tests live in the `[[test]]` targets of this package.

use std::path::PathBuf;

use skyroute_escrow::{Escrow, Faucet};

/// An escrow on a fresh store in the temporary directory, with one account holding `deposit`:
/// the escrow, that account (id, secret) and the store's directory (remove it when done).
pub fn funded_escrow(name: &str, deposit: u64) -> (Escrow, (String, String), PathBuf) {
    let dir = std::env::temp_dir().join(format!("skyroute-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let escrow = Escrow::open(&dir.join("escrow.redb"), Box::new(Faucet)).expect("escrow store");
    let account = escrow.open_account().expect("account");
    escrow.deposit(&account.0, deposit).expect("deposit");
    (escrow, account, dir)
}
