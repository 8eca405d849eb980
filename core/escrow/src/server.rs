//! `skyroute escrow`: the escrow as its own process, answering JSON lines over TCP.
//!
//! Requests (one JSON object per line) and their replies:
//! `{"cmd":"open"}` -> `{"ok":true,"account","secret"}`;
//! `{"cmd":"deposit","account","amount"}` -> `{"ok":true,"balance"}`;
//! `{"cmd":"authorize","account","secret","payer"}` (a route key, hex) -> `{"ok":true}`;
//! `{"cmd":"settle","items":[{"receipt","account","payee_sig"}]}` -> `{"ok":true,"results":
//! [{"paid"} | {"error","code"}]}` (`code`: see `EscrowError::code`); `{"cmd":"balance","account","secret"}` -> `{"ok":true,"balance"}`;
//! `{"cmd":"withdraw","account","secret","to","amount"}` -> `{"ok":true,"txid"}`.
//! Errors: `{"ok":false,"error"}`. Answers name accounts and amounts only, never a payer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use skyroute_proto::PublicKey;

use super::{Escrow, EscrowError, Settle};

/// Longest request line, most items in one settle, most connections at once.
const MAX_LINE: usize = 4 << 20;
const MAX_BATCH: usize = 10_000;
const MAX_CONNECTIONS: usize = 64;

#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Open,
    Deposit { account: String, amount: u64 },
    Authorize { account: String, secret: String, payer: String },
    Settle { items: Vec<Settle> },
    Balance { account: String, secret: String },
    Withdraw { account: String, secret: String, to: String, amount: u64 },
}

fn answer(e: &Escrow, line: &str) -> Value {
    let r: Result<Value, EscrowError> = (|| {
        let req: Request = serde_json::from_str(line).map_err(|x| EscrowError::BadRequest(x.to_string()))?;
        Ok(match req {
            Request::Open => {
                let (account, secret) = e.open_account()?;
                json!({ "ok": true, "account": account, "secret": secret })
            }
            Request::Deposit { account, amount } => json!({ "ok": true, "balance": e.deposit(&account, amount)? }),
            Request::Authorize { account, secret, payer } => {
                let payer =
                    PublicKey::from_hex(&payer).map_err(|_| EscrowError::BadRequest("payer: not a key".into()))?;
                e.authorize(&account, &secret, &payer)?;
                json!({ "ok": true })
            }
            Request::Settle { items } => {
                if items.len() > MAX_BATCH {
                    return Err(EscrowError::BadRequest(format!("at most {MAX_BATCH} items")));
                }
                let results: Vec<Value> = e
                    .settle(&items)?
                    .into_iter()
                    .map(|r| match r {
                        Ok(s) => json!({ "paid": s.paid }),
                        Err(x) => json!({ "error": x.to_string(), "code": x.code() }),
                    })
                    .collect();
                json!({ "ok": true, "results": results })
            }
            Request::Balance { account, secret } => json!({ "ok": true, "balance": e.balance(&account, &secret)? }),
            Request::Withdraw { account, secret, to, amount } => {
                json!({ "ok": true, "txid": e.withdraw(&account, &secret, &to, amount)? })
            }
        })
    })();
    r.unwrap_or_else(|x| json!({ "ok": false, "error": x.to_string() }))
}

fn serve(e: &Escrow, stream: TcpStream) -> std::io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut r).take(MAX_LINE as u64 + 1).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_LINE {
            json!({ "ok": false, "error": format!("request longer than {MAX_LINE} bytes") })
        } else {
            answer(e, line.trim())
        };
        out.write_all(format!("{reply}\n").as_bytes())?;
        if line.len() > MAX_LINE {
            return Ok(());
        }
    }
}

/// Serves `escrow` on `listener` until the process ends.
pub fn run(escrow: Escrow, listener: TcpListener) -> std::io::Result<()> {
    let escrow = Arc::new(escrow);
    let open = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = s.write_all(b"{\"ok\":false,\"error\":\"too many connections\"}\n");
            continue;
        }
        let (e, open) = (escrow.clone(), open.clone());
        std::thread::spawn(move || {
            let _ = serve(&e, stream);
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}
